"""The engine without sockets: failover for verify, the settle rule, and the merged /supported."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from x402_aggregator.aggregator import Aggregator
from x402_aggregator.config import load_config
from x402_aggregator.errors import (
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    ReadTimeout,
    TransportError,
)
from x402_aggregator.localnet.payloads import PAYER, v1_body, v2_body
from x402_aggregator.transport import HandlerTransport, UpstreamRequest, UpstreamResponse

NETWORK = "eip155:84532"
SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
TX = "0x" + "ef" * 32

Answer = UpstreamResponse | TransportError


def ok(body: dict[str, Any], status: int = 200) -> UpstreamResponse:
    return UpstreamResponse(status, {}, orjson.dumps(body))


VERIFIED = ok({"isValid": True, "payer": PAYER})
SETTLED = ok({"success": True, "transaction": TX, "network": NETWORK, "payer": PAYER})
INVALID = ok({"isValid": False, "invalidReason": "insufficient_funds", "payer": PAYER})
UNREACHABLE = ConnectError("cannot connect (Connection refused)")


class Facilitators:
    """Scripted upstreams by name (host <name>.test): path -> answer; refused when unscripted."""

    def __init__(self, **scripts: dict[str, Answer]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, request: UpstreamRequest) -> UpstreamResponse:
        url = urlsplit(request.url)
        name, path = (url.hostname or "").removesuffix(".test"), url.path
        self.calls.append((name, path))
        answer = self.scripts.get(name, {}).get(path, UNREACHABLE)
        if isinstance(answer, TransportError):
            raise answer
        return answer

    def called(self, path: str) -> list[str]:
        return [name for name, called_path in self.calls if called_path == path]


Engines = Callable[[Facilitators], Aggregator]


@pytest.fixture
async def engine_for() -> AsyncIterator[Engines]:
    """Build engines over scripted facilitators (backup listed first, priority 1); close them."""
    made: list[Aggregator] = []

    def make(facilitators: Facilitators) -> Aggregator:
        config = load_config(
            {
                "upstreams": [
                    {"name": "backup", "url": "http://backup.test", "priority": 1},
                    {"name": "primary", "url": "http://primary.test/", "priority": 0},
                ],
                "health": {"startup_wait_s": 1.0},
            }
        )
        made.append(Aggregator(config, transport=HandlerTransport(facilitators)))
        return made[-1]

    yield make
    for engine in made:
        await engine.aclose()


def body(**kwargs: Any) -> bytes:
    return orjson.dumps(v2_body(**kwargs))


# verify


@pytest.mark.parametrize(
    "failure",
    [
        UNREACHABLE,
        ConnectTimeout("connect timed out"),
        ReadTimeout("no answer within 10 s"),
        ConnectionLost("server closed the connection"),
        ok({"isValid": True}, status=503),
        ok({"isValid": False, "invalidReason": "insufficient_funds"}, status=500),
        UpstreamResponse(200, {}, b"<html>"),
        ok({"isValid": False, "invalidReason": "unsupported_scheme"}),
    ],
    ids=["refused", "connect-timeout", "read-timeout", "lost", "503", "500", "garbage", "soft"],
)
async def test_verify_fails_over_in_priority_order(engine_for: Engines, failure: Answer) -> None:
    """A verify without a usable answer from the primary is asked of the backup, and answered."""
    facilitators = Facilitators(
        primary={"/verify": failure}, backup={"/verify": VERIFIED, "/settle": SETTLED}
    )
    engine = engine_for(facilitators)

    reply = await engine.verify(body())

    assert (reply.status, reply.upstream, reply.attempts) == (200, "backup", 2)
    assert reply.body == VERIFIED.body
    assert facilitators.called("/verify") == ["primary", "backup"]
    assert engine.upstreams[0].health.failures == 1


async def test_a_verify_rejection_is_final(engine_for: Engines) -> None:
    """A definitive rejection from the primary is the answer; the backup is not asked."""
    facilitators = Facilitators(primary={"/verify": INVALID}, backup={"/verify": VERIFIED})
    engine = engine_for(facilitators)

    reply = await engine.verify(body())

    assert (reply.status, reply.upstream, reply.attempts) == (200, "primary", 1)
    assert reply.json()["invalidReason"] == "insufficient_funds"
    assert facilitators.called("/verify") == ["primary"]


async def test_a_soft_rejection_is_returned_when_nobody_does_better(engine_for: Engines) -> None:
    """If the backup gives nothing usable, the primary's upstream-side rejection is relayed."""
    soft = ok({"isValid": False, "invalidReason": "node_failure"})
    facilitators = Facilitators(primary={"/verify": soft}, backup={"/verify": UNREACHABLE})
    engine = engine_for(facilitators)

    reply = await engine.verify(body())

    assert (reply.status, reply.upstream) == (200, "primary")
    assert reply.json()["invalidReason"] == "node_failure"


async def test_a_verify_failing_everywhere_is_502_naming_each_upstream(
    engine_for: Engines,
) -> None:
    """When no upstream answers, the caller gets 502 no_upstream_available listing each failure."""
    facilitators = Facilitators(primary={"/verify": ok({}, status=503)})
    engine = engine_for(facilitators)

    reply = await engine.verify(body())

    answer = reply.json()
    assert (reply.status, reply.upstream, reply.attempts) == (502, None, 2)
    assert (answer["isValid"], answer["invalidReason"]) == (False, "no_upstream_available")
    assert [u["name"] for u in answer["upstreams"]] == ["primary", "backup"]


async def test_a_malformed_request_is_400_and_never_forwarded(engine_for: Engines) -> None:
    """A body that fails validation is answered 400 by the aggregator; no upstream sees it."""
    facilitators = Facilitators(primary={"/verify": VERIFIED, "/settle": SETTLED})
    engine = engine_for(facilitators)

    verified = await engine.verify(b"{")
    settled = await engine.settle(b'{"x402Version": 2, "paymentRequirements": {"network": "n"}}')

    assert (verified.status, verified.json()["invalidReason"]) == (400, "invalid_payload")
    assert (settled.status, settled.json()["errorReason"]) == (400, "invalid_payload")
    assert settled.json()["network"] == "n"
    assert facilitators.calls == []
    assert engine.totals == {
        "verify": 1,
        "settle": 1,
        "hedges": 0,
        "failovers": 0,
        "ambiguous_settlements": 0,
    }


# settle


@pytest.mark.parametrize(
    "never_arrived", [UNREACHABLE, ConnectTimeout("connect timed out")], ids=["refused", "timeout"]
)
async def test_a_settle_moves_on_only_when_it_never_arrived(
    engine_for: Engines, never_arrived: TransportError
) -> None:
    """A settle refused or timed out while connecting is sent to the backup."""
    facilitators = Facilitators(primary={"/settle": never_arrived}, backup={"/settle": SETTLED})
    engine = engine_for(facilitators)

    reply = await engine.settle(body())

    assert (reply.status, reply.upstream, reply.attempts) == (200, "backup", 2)
    assert reply.json()["transaction"] == TX
    assert facilitators.called("/settle") == ["primary", "backup"]


@pytest.mark.parametrize(
    "lost",
    [
        ReadTimeout("no answer within 60 s"),
        ConnectionLost("server closed the connection"),
        ok({"success": False, "errorReason": "unexpected_error"}, status=500),
        ok({"success": False, "errorReason": "insufficient_funds"}, status=402),
        UpstreamResponse(200, {}, b"<html>"),
        ok({"success": True, "network": NETWORK, "transaction": None}),
    ],
    ids=["read-timeout", "lost", "500", "402", "garbage", "success-with-null-tx"],
)
async def test_a_settle_that_may_have_arrived_is_never_sent_elsewhere(
    engine_for: Engines, lost: Answer
) -> None:
    """An ambiguous settle is answered settlement_outcome_unknown; the backup is never called."""
    facilitators = Facilitators(primary={"/settle": lost}, backup={"/settle": SETTLED})
    engine = engine_for(facilitators)

    reply = await engine.settle(body())

    answer = reply.json()
    assert (reply.status, reply.upstream, reply.attempts) == (200, "primary", 1)
    assert (answer["success"], answer["errorReason"]) == (False, "settlement_outcome_unknown")
    assert (answer["transaction"], answer["network"]) == ("", NETWORK)
    assert "primary" in answer["errorMessage"]
    assert facilitators.called("/settle") == ["primary"]


async def test_a_success_without_a_transaction_is_settled_once(engine_for: Engines) -> None:
    """A batch-settlement voucher (success, empty transaction) is a success: relayed as sent,
    recorded settled, and a re-presented copy is a duplicate (with the same empty transaction)."""
    voucher = {"success": True, "transaction": "", "network": NETWORK, "extensions": {"v": 1}}
    facilitators = Facilitators(primary={"/settle": ok(voucher)}, backup={"/settle": SETTLED})
    engine = engine_for(facilitators)

    payment = body()
    first = await engine.settle(payment)
    again = await engine.settle(payment)

    assert (first.status, first.upstream, first.json()) == (200, "primary", voucher)
    assert (again.json()["errorReason"], again.json()["transaction"]) == (
        "duplicate_settlement",
        "",
    )
    assert facilitators.called("/settle") == ["primary"]


async def test_settlement_pending_is_relayed_and_not_sent_elsewhere(engine_for: Engines) -> None:
    """settlement_pending reaches the caller with its transaction; the backup is not asked."""
    pending = ok({"success": False, "errorReason": "settlement_pending", "transaction": TX})
    facilitators = Facilitators(primary={"/settle": pending}, backup={"/settle": SETTLED})
    engine = engine_for(facilitators)

    reply = await engine.settle(body())

    answer = reply.json()
    assert (reply.status, reply.upstream) == (200, "primary")
    assert (answer["errorReason"], answer["transaction"], answer["network"]) == (
        "settlement_pending",
        TX,
        NETWORK,
    )
    assert facilitators.called("/settle") == ["primary"]


async def test_a_settle_rejection_is_final(engine_for: Engines) -> None:
    """A definitive settle failure is relayed in spec shape; the backup is not asked."""
    failed = ok({"success": False, "errorReason": "insufficient_funds"}, status=400)
    facilitators = Facilitators(primary={"/settle": failed}, backup={"/settle": SETTLED})
    engine = engine_for(facilitators)

    reply = await engine.settle(body())

    assert reply.status == 200
    assert reply.json() == {
        "success": False,
        "errorReason": "insufficient_funds",
        "transaction": "",
        "network": NETWORK,
    }
    assert facilitators.called("/settle") == ["primary"]


async def test_a_settle_reaching_no_upstream_is_502(engine_for: Engines) -> None:
    """A settle refused everywhere is a 502 no_upstream_available: nothing was settled."""
    facilitators = Facilitators()
    engine = engine_for(facilitators)

    reply = await engine.settle(body())

    assert reply.status == 502
    assert reply.json()["errorReason"] == "no_upstream_available"
    assert facilitators.called("/settle") == ["primary", "backup"]


# /supported and capability routing


def supported(*kinds: dict[str, Any], **rest: Any) -> UpstreamResponse:
    return ok({"kinds": list(kinds), **rest})


EVM_KIND = {"x402Version": 2, "scheme": "exact", "network": NETWORK}
SOLANA_KIND = {
    "x402Version": 2,
    "scheme": "exact",
    "network": SOLANA_DEVNET,
    "extra": {"feePayer": "FeePayer111"},
}


async def test_supported_reflects_the_probes_after_start(engine_for: Engines) -> None:
    """After start, supported() is the merge of the upstreams' /supported, primary first."""
    facilitators = Facilitators(
        primary={"/supported": supported(EVM_KIND, extensions=["bazaar", "payment-identifier"])},
        backup={
            "/supported": supported(
                SOLANA_KIND, EVM_KIND, extensions=["bazaar"], signers={"solana:*": ["FeePayer111"]}
            )
        },
    )
    engine = engine_for(facilitators)
    assert orjson.loads(engine.supported()) == {"kinds": [], "extensions": [], "signers": {}}

    await engine.start()

    assert orjson.loads(engine.supported()) == {
        "kinds": [EVM_KIND, SOLANA_KIND],
        "extensions": ["bazaar"],
        "signers": {"solana:*": ["FeePayer111"]},
    }
    assert sorted(facilitators.called("/supported")) == ["backup", "primary"]
    assert [u.health.state()[0] for u in engine.upstreams] == ["healthy", "healthy"]


async def test_a_down_upstream_is_left_out_of_supported(engine_for: Engines) -> None:
    """An upstream whose probe never answered contributes nothing to supported()."""
    facilitators = Facilitators(primary={"/supported": supported(EVM_KIND)})
    engine = engine_for(facilitators)

    await engine.start()

    assert orjson.loads(engine.supported())["kinds"] == [EVM_KIND]
    assert [(u.name, u.health.probe_state) for u in engine.upstreams] == [
        ("primary", "healthy"),
        ("backup", "unknown"),
    ]


async def test_probed_capabilities_route_payments(engine_for: Engines) -> None:
    """After start, a payment goes only to upstreams that support its kind."""
    facilitators = Facilitators(
        primary={"/supported": supported(SOLANA_KIND), "/verify": VERIFIED},
        backup={"/supported": supported(EVM_KIND), "/verify": VERIFIED},
    )
    engine = engine_for(facilitators)
    await engine.start()

    reply = await engine.verify(body())

    assert (reply.status, reply.upstream, reply.attempts) == (200, "backup", 1)
    assert facilitators.called("/verify") == ["backup"]


@pytest.mark.parametrize(
    ("payment", "reason"),
    [
        (body(network="eip155:1"), "invalid_network"),
        (body(scheme="upto"), "unsupported_scheme"),
        (orjson.dumps(v1_body()), "unsupported_scheme"),
    ],
    ids=["network", "scheme", "version"],
)
async def test_an_unsupported_payment_is_answered_without_asking_anyone(
    engine_for: Engines, payment: bytes, reason: str
) -> None:
    """With every capability known, a kind nobody serves is a 200 failure with the reason."""
    facilitators = Facilitators(
        primary={"/supported": supported(EVM_KIND), "/settle": SETTLED},
        backup={"/supported": supported(EVM_KIND), "/settle": SETTLED},
    )
    engine = engine_for(facilitators)
    await engine.start()

    reply = await engine.settle(payment)

    assert (reply.status, reply.upstream, reply.attempts) == (200, None, 0)
    assert reply.json()["errorReason"] == reason
    assert facilitators.called("/settle") == []
