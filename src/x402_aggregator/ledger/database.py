"""Open the ledger's database from its URL: the one place that knows which driver serves which.

:class:`Database` itself lives in :mod:`.base`, beside the drivers that subclass it, so that
neither driver imports this module and the package has no import cycle.
"""

from __future__ import annotations

from urllib.parse import unquote

from ..errors import LedgerError
from .base import Database
from .postgres import PostgresDatabase
from .sqlite import SQLiteDatabase

__all__ = ["Database", "connect"]


def connect(url: str) -> Database:
    """A database for ``sqlite:///path``, ``sqlite:///:memory:`` or ``postgresql://…``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise LedgerError(
                "a SQLite ledger URL looks like sqlite:///relative.db or sqlite:////abs.db"
            )
        return SQLiteDatabase(unquote(url[len("sqlite:///") :]) or ":memory:")
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise LedgerError(f"unsupported ledger URL scheme {scheme!r}: use sqlite:/// or postgresql://")
