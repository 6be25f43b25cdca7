"""The settlement ledger: every settle on disk before it is sent, one success per payment."""

from ..errors import Fenced, LedgerError
from .base import Database
from .database import connect
from .records import STATES, UNRESOLVED, AttemptEnd, AttemptRecord, Payment, Record, State
from .store import Claim, IdempotentResponse, Ledger

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
