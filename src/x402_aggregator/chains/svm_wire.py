"""Solana wire transactions, decoded strictly and without dependencies (the engine needs no SDK).

An SVM ``exact`` payment is a serialized transaction: compact-u16 counted signatures, then the
message (legacy, or v0 with a version byte and address-table lookups). What the engine reads from
it: the fee payer (account 0), the signers' signatures, the recent blockhash that bounds its life,
and the SPL Token ``TransferChecked`` it carries. Anything malformed is a ``ValueError``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {char: index for index, char in enumerate(_ALPHABET)}
TOKEN_PROGRAMS = frozenset(
    {"TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA", "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb"}
)
_TRANSFER, _TRANSFER_CHECKED = 3, 12
#: The largest transaction a Solana packet holds.
MAX_TRANSACTION_BYTES = 1232


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    text = ""
    while number:
        number, digit = divmod(number, 58)
        text = _ALPHABET[digit] + text
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + text


#: Account keys repeat across payments (programs, mints, fee payers, payers, the blockhash of the
#: moment): base58 is the decoder's main cost, so remember recent ones (bounded, so a flood of
#: unique keys only churns it).
_key_text = lru_cache(maxsize=8192)(b58encode)


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _INDEX:
            raise ValueError(f"not base58: {char!r}")
        number = number * 58 + _INDEX[char]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


@dataclass(frozen=True, slots=True)
class Instruction:
    program: str
    accounts: tuple[str, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Transfer:
    """An SPL Token transfer from ``source`` to ``destination``, signed by ``authority``."""

    program: str
    source: str
    mint: str | None  # Transfer (not Checked) does not name it
    destination: str
    authority: str
    amount: int


@dataclass(frozen=True, slots=True)
class WireTransaction:
    signatures: tuple[bytes, ...]
    message: bytes
    version: int | None  # None: legacy
    signers: tuple[str, ...]
    accounts: tuple[str, ...]  # the static account keys, fee payer first
    blockhash: str
    instructions: tuple[Instruction, ...]

    @property
    def fee_payer(self) -> str:
        return self.accounts[0]

    @property
    def message_hash(self) -> str:
        """sha256 of the message: what every signer signed, unchanged when the fee payer signs."""
        return hashlib.sha256(self.message).hexdigest()

    def signature_of(self, signer: str) -> str | None:
        """A signer's signature, base58; None if it is not a signer or has not signed yet."""
        if signer not in self.signers:
            return None
        signature = self.signatures[self.signers.index(signer)]
        return b58encode(signature) if any(signature) else None

    def transfers(self) -> tuple[Transfer, ...]:
        return tuple(t for t in map(_transfer, self.instructions) if t is not None)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise ValueError("truncated transaction")
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def shortvec(self) -> int:
        value = 0
        for shift in (0, 7, 14):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("compact-u16 longer than 3 bytes")


def decode(raw: bytes) -> WireTransaction:
    """A wire transaction; ``ValueError`` for anything that is not one."""
    if len(raw) > MAX_TRANSACTION_BYTES:
        raise ValueError(f"{len(raw)} bytes: larger than a Solana transaction can be")
    reader = _Reader(raw)
    signatures = tuple(reader.take(64) for _ in range(reader.shortvec()))
    start = reader.at
    version: int | None = None
    if reader.data[start : start + 1] and reader.data[start] & 0x80:
        version = reader.byte() & 0x7F
        if version != 0:
            raise ValueError(f"unsupported transaction version {version}")
    required, _, _ = reader.byte(), reader.byte(), reader.byte()
    keys = tuple(_key_text(reader.take(32)) for _ in range(reader.shortvec()))
    blockhash = _key_text(reader.take(32))
    raw_instructions = []
    for _ in range(reader.shortvec()):
        program = reader.byte()
        accounts = tuple(reader.byte() for _ in range(reader.shortvec()))
        raw_instructions.append((program, accounts, reader.take(reader.shortvec())))
    if version is not None:
        for _ in range(reader.shortvec()):  # address-table lookups: key, writable, readonly
            reader.take(32)
            reader.take(reader.shortvec())
            reader.take(reader.shortvec())
    if reader.at != len(raw):
        raise ValueError("trailing bytes after the message")
    if not keys or required < 1 or required > len(keys) or required != len(signatures):
        raise ValueError("the signatures do not match the message's signers")
    instructions = tuple(
        Instruction(_key(keys, program), tuple(_key(keys, i) for i in accounts), data)
        for program, accounts, data in raw_instructions
    )
    return WireTransaction(
        signatures, raw[start:], version, keys[:required], keys, blockhash, instructions
    )


def _key(keys: tuple[str, ...], index: int) -> str:
    # Indexes past the static keys point into lookup tables, which only a node can resolve.
    return keys[index] if index < len(keys) else f"lookup:{index}"


def _transfer(ix: Instruction) -> Transfer | None:
    if ix.program not in TOKEN_PROGRAMS or not ix.data:
        return None
    if ix.data[0] == _TRANSFER_CHECKED and len(ix.data) == 10 and len(ix.accounts) >= 4:
        source, mint, destination, authority = ix.accounts[:4]
        amount = int.from_bytes(ix.data[1:9], "little")
        return Transfer(ix.program, source, mint, destination, authority, amount)
    if ix.data[0] == _TRANSFER and len(ix.data) == 9 and len(ix.accounts) >= 3:
        source, destination, authority = ix.accounts[:3]
        amount = int.from_bytes(ix.data[1:9], "little")
        return Transfer(ix.program, source, None, destination, authority, amount)
    return None
