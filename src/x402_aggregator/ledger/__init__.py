"""The settlement ledger: every settle on disk before it is sent, one success per payment."""

from ..errors import Fenced, LedgerError
from .base import Database
from .claims import Claim
from .database import connect
from .idempotency import IdempotentResponse
from .records import STATES, UNRESOLVED, AttemptEnd, AttemptRecord, Payment, Record, State
from .store import Ledger

__all__ = [
    "STATES",
    "UNRESOLVED",
    "AttemptEnd",
    "AttemptRecord",
    "Claim",
    "Database",
    "Fenced",
    "IdempotentResponse",
    "Ledger",
    "LedgerError",
    "Payment",
    "Record",
    "State",
    "connect",
]
