"""The aggregator's exceptions, all under one root.

Expected answers (an invalid payment, a failed settle) are values, not exceptions. These are for
configuration mistakes, bad requests, infrastructure faults and broken invariants::

    AggregatorError
    ├── ConfigError (ValueError)        the configuration cannot be used
    ├── RequestError (ValueError)       a caller's request is malformed; carries the x402 reason
    ├── UpstreamAuthError (ValueError)  an upstream refused our credentials (401/403/407)
    │   └── SigningError                we could not sign a token for a request to it
    ├── TransportError (OSError)        an upstream call failed below HTTP
    │   ├── ConnectError                the request provably never reached the upstream
    │   │   └── ConnectTimeout
    │   ├── ReadTimeout                 sent, no complete answer in time: it may have arrived
    │   └── ConnectionLost              sent, then the connection broke: it may have arrived
    ├── ChainError                      a chain RPC gave no answer (unreachable, error, garbage)
    └── LedgerError                     the ledger's database cannot be used
        ├── Fenced                      another instance claimed the payment since we did
        └── UnrecordedSettle            a settle was sent, then its outcome could not be written
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Base class of every exception raised by x402-aggregator."""


class ConfigError(AggregatorError, ValueError):
    """The configuration is invalid; the message names the field and the file."""


class RequestError(AggregatorError, ValueError):
    """A caller's request cannot be processed; answered with an x402-shaped error body."""

    def __init__(self, reason: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


class UpstreamAuthError(AggregatorError, ValueError):
    """An upstream refused our credentials, or we could not sign a request for it.

    Told apart from "unreachable" because the fix is different: the key, not the network.
    """


class SigningError(UpstreamAuthError):
    """A token could not be signed for a request; the message names no secret."""


class TransportError(AggregatorError, OSError):
    """An upstream call failed below HTTP (no usable status line and body)."""

    #: True when the request bytes cannot have reached the upstream's application.
    never_arrived: bool = False


class ConnectError(TransportError):
    """The connection could not be opened (refused, unreachable, DNS, TLS handshake)."""

    never_arrived = True


class ConnectTimeout(ConnectError):
    """The connection was not established within the connect timeout."""


class ReadTimeout(TransportError):
    """The request was sent but no complete answer arrived within the timeout."""


class ConnectionLost(TransportError):
    """The connection broke after the request was sent (reset, closed, truncated answer)."""


class ChainError(AggregatorError):
    """The RPC could not give an answer (unreachable, timeout, JSON-RPC error, garbage)."""


class LedgerError(AggregatorError):
    """The ledger's database cannot be used (unreachable, full, newer schema, corrupt)."""


class Fenced(LedgerError):
    """Another instance claimed the payment since we did: our claim is void."""


class UnrecordedSettle(LedgerError):
    """The ledger failed after a settle was sent: its outcome cannot be reported as known."""
