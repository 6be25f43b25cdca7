"""The lean HTTP/1.1 upstream client on real loopback sockets, against scripted servers.

Each server reads one request at a time (head, then ``Content-Length`` bytes) and writes the
bytes the test scripted, so framing, pooling, decoding, limits, TLS and every failure are
exercised exactly as a facilitator's socket would present them.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from x402_aggregator.errors import ConnectError, ConnectionLost, ConnectTimeout, ReadTimeout
from x402_aggregator.http1 import Http1Transport
from x402_aggregator.localnet.fake_facilitator import Mode
from x402_aggregator.localnet.live import StalledListener, free_port
from x402_aggregator.localnet.payloads import v2_body
from x402_aggregator.transport import MAX_ANSWER_BYTES, UpstreamRequest

from .conftest import AggregatorFactory, FakeFactory

#: What a scripted server answers to one request (its head and body): bytes to write, or None
#: to close at once; a coroutine may wait first.
Script = Callable[[bytes, bytes], Awaitable[bytes | None]]


def ok(body: bytes = b'{"isValid":true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    def url(self, path: str = "/verify", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def serve(
    script: Script, context: ssl.SSLContext | None = None
) -> tuple[Server, asyncio.Server]:
    state = Server(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                state.requests.append(head)
                answer = await script(head, body)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in head.lower() or answer.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    return state, server


@pytest.fixture
async def transport() -> AsyncIterator[Http1Transport]:
    client = Http1Transport()
    yield client
    await client.aclose()


def post(url: str, *, fresh: bool = False, timeout_s: float = 2.0) -> UpstreamRequest:
    return UpstreamRequest(
        "POST",
        url,
        {"Content-Type": "application/json"},
        b'{"x402Version":2}',
        timeout_s=timeout_s,
        connect_timeout_s=0.5,
        fresh_connection=fresh,
    )


def answering(answer: bytes | None) -> Script:
    async def script(head: bytes, body: bytes) -> bytes | None:
        return answer

    return script


async def test_pooled_requests_reuse_one_connection_and_fresh_ones_do_not(
    transport: Http1Transport,
) -> None:
    state, server = await serve(answering(ok()))
    async with server:
        for _ in range(3):
            response = await transport.send(post(state.url()))
            assert (response.status, response.body) == (200, b'{"isValid":true}')
        assert state.connections == 1
        fresh = await transport.send(post(state.url("/settle"), fresh=True))
        assert fresh.status == 200
        assert state.connections == 2
    assert b"connection: close" in state.requests[-1].lower()
    assert state.requests[0].startswith(b"POST /verify HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{state.port}".encode() in state.requests[0].lower()


async def test_headers_are_looked_up_without_regard_to_case(transport: Http1Transport) -> None:
    state, server = await serve(answering(ok(b"{}", "EXTENSION-RESPONSES: e30=")))
    async with server:
        response = await transport.send(post(state.url()))
    assert response.headers.get("extension-responses") == "e30="
    assert response.headers["CONTENT-TYPE"] == "application/json"


async def test_chunked_and_close_delimited_answers_are_read_whole(
    transport: Http1Transport,
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"isV\r\nb\r\nalid":true}\r\n0\r\n\r\n'
    )
    closed = b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"isValid":true}'

    async def until_close(head: bytes, body: bytes) -> bytes | None:
        return closed

    for script, reused in ((answering(chunked), True), (until_close, False)):
        state, server = await serve(script)
        async with server:
            first = await transport.send(post(state.url()))
            assert first.body == b'{"isValid":true}'
            if reused:
                await transport.send(post(state.url()))
                assert state.connections == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_answers_are_decoded(transport: Http1Transport, encoding: str) -> None:
    raw = b'{"success":true,"transaction":"0xab"}'
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    state, server = await serve(answering(ok(packed, f"Content-Encoding: {encoding}")))
    async with server:
        response = await transport.send(post(state.url()))
    assert response.body == raw


async def test_the_size_limit_is_counted_after_decoding(transport: Http1Transport) -> None:
    """200 MB of zeros in a ~200 KB gzip answer: cut just past the limit, never inflated whole."""
    bomb = gzip.compress(b"0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < MAX_ANSWER_BYTES
    state, server = await serve(answering(ok(bomb, "Content-Encoding: gzip")))
    async with server:
        response = await transport.send(post(state.url()))
        plain = await transport.send(post(state.url(), fresh=True))
    assert len(response.body) == MAX_ANSWER_BYTES + 1
    assert len(plain.body) == MAX_ANSWER_BYTES + 1


async def test_an_oversized_plain_answer_is_cut_and_its_connection_dropped(
    transport: Http1Transport,
) -> None:
    state, server = await serve(answering(ok(b"x" * (MAX_ANSWER_BYTES + 10))))
    async with server:
        response = await transport.send(post(state.url()))
        await transport.send(post(state.url()))
    assert len(response.body) == MAX_ANSWER_BYTES + 1
    assert state.connections == 2  # the cut answer's connection was not reused


async def test_a_redirect_is_returned_not_followed(transport: Http1Transport) -> None:
    redirect = (
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://10.0.0.1/\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    state, server = await serve(answering(redirect))
    async with server:
        response = await transport.send(post(state.url()))
    assert (response.status, response.headers["location"]) == (307, "http://10.0.0.1/")
    assert len(state.requests) == 1


async def test_refused_and_timed_out_connects_say_it_never_arrived(
    transport: Http1Transport,
) -> None:
    with pytest.raises(ConnectError, match="cannot connect"):
        await transport.send(post(f"http://127.0.0.1:{free_port()}/verify"))
    stalled = StalledListener()
    try:
        with pytest.raises(ConnectTimeout):
            await transport.send(post(f"http://127.0.0.1:{stalled.port}/verify"))
    finally:
        stalled.close()


async def test_no_answer_in_time_is_a_read_timeout(transport: Http1Transport) -> None:
    async def hang(head: bytes, body: bytes) -> bytes | None:
        await asyncio.sleep(10)
        return None

    state, server = await serve(hang)
    async with server:
        with pytest.raises(ReadTimeout, match=r"0\.3 s"):
            await transport.send(post(state.url(), timeout_s=0.3))


@pytest.mark.parametrize(
    "answer",
    [None, b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"isVa', b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["closed-silently", "half-a-body", "garbage"],
)
async def test_an_answer_cut_short_or_garbled_is_a_lost_connection(
    transport: Http1Transport, answer: bytes | None
) -> None:
    # A fresh connection asks for "Connection: close": the server closes after writing.
    state, server = await serve(answering(answer))
    async with server:
        with pytest.raises(ConnectionLost):
            await transport.send(post(state.url(), fresh=True))


async def test_a_cancelled_request_leaves_no_connection_behind(transport: Http1Transport) -> None:
    """A hedge's loser is cancelled mid-answer: its connection is closed, not pooled."""

    async def slow(head: bytes, body: bytes) -> bytes | None:
        await asyncio.sleep(0.5)
        return ok()

    state, server = await serve(slow)
    async with server:
        task = asyncio.create_task(transport.send(post(state.url())))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await transport.send(post(state.url()))
    assert state.connections == 2


def self_signed(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client one trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_upstreams_are_verified_through_the_event_loop_s_ssl(tmp_path: Path) -> None:
    server_context, client_context = self_signed(tmp_path)
    state, server = await serve(answering(ok()), server_context)
    trusting, default = Http1Transport(ssl_context=client_context), Http1Transport()
    try:
        async with server:
            response = await trusting.send(post(state.url(scheme="https")))
            assert response.body == b'{"isValid":true}'
            await trusting.send(post(state.url(scheme="https")))
            assert state.connections == 1
            with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.send(post(state.url(scheme="https")))
    finally:
        await trusting.aclose()
        await default.aclose()


def test_the_client_runs_on_uvloop_as_serve_does() -> None:
    """``serve`` runs on uvloop, whose transports are not ``asyncio.Transport`` subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> tuple[int, int]:
        state, server = await serve(answering(ok()))
        client = Http1Transport()
        try:
            async with server:
                for _ in range(2):
                    assert (await client.send(post(state.url()))).status == 200
                with pytest.raises(ConnectError):
                    await client.send(post(f"http://127.0.0.1:{free_port()}/verify"))
        finally:
            await client.aclose()
        return state.connections, len(state.requests)

    assert uvloop.run(exchange()) == (1, 2)


@pytest.mark.parametrize("client", ["http1", "aiohttp"])
def test_either_configured_client_serves_the_aggregator(
    fakes: FakeFactory, aggregator: AggregatorFactory, client: str
) -> None:
    """``server.upstream_client`` picks the client; both verify, settle and fail over."""
    primary, backup = fakes("primary"), fakes("backup")
    agg = aggregator(primary, backup, server={"upstream_client": client})
    assert agg.engine.config.server.upstream_client == client

    verified = agg.post("/verify", v2_body())
    settled = agg.post("/settle", v2_body())
    primary.set("verify", Mode.RESET)
    failed_over = agg.post("/verify", v2_body())

    assert verified.json()["isValid"] is True
    assert settled.json()["success"] is True
    assert failed_over.headers["X-Aggregator-Upstream"] == "backup"


async def test_credentials_in_the_url_become_basic_auth(transport: Http1Transport) -> None:
    """RPC URLs may carry ``user:password@``: sent as Basic auth, never in the request line."""
    state, server = await serve(answering(ok()))
    async with server:
        url = f"http://rpc%40user:s%3Acret@127.0.0.1:{state.port}/key/abc?x=1"
        await transport.send(post(url))
    head = state.requests[0]
    assert head.startswith(b"POST /key/abc?x=1 HTTP/1.1\r\n")
    assert b"Authorization: Basic cnBjQHVzZXI6czpjcmV0\r\n" in head  # rpc@user:s:cret
    assert b"cret@" not in head
