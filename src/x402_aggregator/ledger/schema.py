"""The ledger's tables, as numbered migrations: the one place the schema is written down.

Each entry of :data:`MIGRATIONS` is applied once, in order, by :meth:`.Database.migrate`; a
database that has more than this code knows is refused. Add a new entry, never edit an old one:
databases already at that version would not see the change.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE settlements (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            version BIGINT NOT NULL,
            owner TEXT,
            network TEXT NOT NULL,
            scheme TEXT NOT NULL,
            x402_version INTEGER NOT NULL,
            asset TEXT,
            payer TEXT,
            nonce TEXT,
            valid_before BIGINT,
            payload_hash TEXT NOT NULL,
            request TEXT NOT NULL,
            upstream TEXT,
            tx TEXT,
            response TEXT,
            reported INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            next_check_at DOUBLE PRECISION,
            checks INTEGER NOT NULL DEFAULT 0,
            attempt_count INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX settlements_state ON settlements (state, next_check_at)",
        "CREATE INDEX settlements_tx ON settlements (tx)",
        "CREATE INDEX settlements_expiry ON settlements (expires_at)",
        """CREATE TABLE attempts (
            settlement_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            kind TEXT NOT NULL,
            upstream TEXT,
            instance TEXT,
            sent_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            outcome TEXT,
            http_status INTEGER,
            tx TEXT,
            response TEXT,
            error TEXT,
            PRIMARY KEY (settlement_id, n)
        )""",
        """CREATE TABLE idempotency_keys (
            idem_key TEXT PRIMARY KEY,
            settlement_id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER NOT NULL,
            response TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            process_start TEXT,
            started_at DOUBLE PRECISION NOT NULL,
            heartbeat_at DOUBLE PRECISION NOT NULL
        )""",
    ),
)
