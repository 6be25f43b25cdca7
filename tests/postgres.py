"""A throwaway PostgreSQL server for tests and benchmarks: a private cluster in a temp dir.

The cluster listens on 127.0.0.1 only, on a free port, with trust authentication for that
address alone (no other entries in pg_hba.conf), and its Unix socket in the temp dir. Durability
settings are PostgreSQL's defaults (fsync on); only initdb's own final sync is skipped (-N), since
the cluster is deleted anyway. Needs the server binaries (Debian: the package ``postgresql``).

PostgreSQL refuses to run as root; as root, initdb and pg_ctl run as the ``postgres`` system user
(created by the Debian package) through ``runuser``, and the temp dir is handed over to it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from x402_aggregator.localnet.live import free_port

#: The bootstrap superuser initdb creates, and the database start() creates for it.
USER = "x402"
DATABASE = "x402"
#: The system user the server runs as when we are root.
SYSTEM_USER = "postgres"
HOST = "127.0.0.1"

_INITDB_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30
_PSQL_TIMEOUT_S = 60.0
_PORT_ATTEMPTS = 3
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INSTALL_HINT = "install the Debian package postgresql (apt-get install postgresql)"


def postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then Debian's newest."""
    found = shutil.which("initdb")
    if found is not None:
        # Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so
        # that pg_ctl, postgres and psql come from the same installation as initdb.
        real = Path(found).resolve().parent
        if _has_server_binaries(real):
            return real
        if _has_server_binaries(Path(found).parent):
            return Path(found).parent
    candidates = [
        p.parent
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if _has_server_binaries(p.parent)
    ]
    if candidates:
        return max(candidates, key=lambda d: _version_key(d.parent.name))
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in "
        f"/usr/lib/postgresql/*/bin: {_INSTALL_HINT}"
    )


def _has_server_binaries(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _conf_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1 in a temp dir, for tests and benchmarks.

    ``with PostgresServer() as pg: ... pg.dsn ...``; or ``start()`` / ``stop()``. ``dsn`` points
    at the database ``x402`` as the superuser ``x402`` (no password); ``new_database()`` makes
    further empty databases, cheap enough for one per test.

    ``settings`` are extra postgresql.conf parameters (e.g. ``{"max_connections": "300"}``).
    """

    def __init__(self, *, settings: Mapping[str, str] | None = None) -> None:
        self.host = HOST
        self.port = 0
        self.user = USER
        self.database = DATABASE
        self._settings = dict(settings or {})
        self._bin_dir: Path | None = None
        self._tmp: Path | None = None
        self._running = False
        self._names = itertools.count(1)

    # -- public API

    @property
    def dsn(self) -> str:
        """The DSN of the main database, e.g. ``postgresql://x402@127.0.0.1:PORT/x402``."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        """The DSN of a database of this server."""
        self._require_running()
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self._tmp_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server's log file (stderr of the postmaster)."""
        return self._tmp_dir / "postgres.log"

    def start(self) -> PostgresServer:
        """Create the cluster (initdb), start it (pg_ctl start -w) and create the database."""
        if self._running or self._tmp is not None:
            raise RuntimeError("PostgresServer already started")
        self._bin_dir = postgres_bin_dir()
        self._tmp = self._make_tmp_dir()
        atexit.register(self.stop)
        try:
            self._initdb()
            self._start_postmaster()
            self._psql("postgres", f'CREATE DATABASE "{self.database}"')
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete its temp dir; idempotent."""
        atexit.unregister(self.stop)
        self._running = False
        if self._tmp is not None:
            # Whatever start() got to: a postmaster.pid means a postmaster may be running.
            if (self.data_dir / "postmaster.pid").exists():
                self._stop_postmaster()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def new_database(self, name: str | None = None) -> str:
        """CREATE DATABASE with a fresh (or the given) name; returns its DSN."""
        self._require_running()
        if name is None:
            name = f"test_{next(self._names)}_{secrets.token_hex(4)}"
        elif not _NAME_RE.match(name):
            raise ValueError(f"database name must match {_NAME_RE.pattern}: {name!r}")
        self._psql("postgres", f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    @property
    def _tmp_dir(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("PostgresServer is not started")
        return self._tmp

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("PostgresServer is not running")

    @staticmethod
    def _as_root() -> bool:
        return os.geteuid() == 0

    def _make_tmp_dir(self) -> Path:
        if not self._as_root():
            return Path(tempfile.mkdtemp(prefix="x402-pg-"))
        try:
            account = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, and PostgreSQL refuses to run as root; there is no system "
                f"user {SYSTEM_USER!r} to run it as: {_INSTALL_HINT}"
            ) from None
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root, and runuser (util-linux) is not installed")
        # /tmp rather than $TMPDIR: the postgres user must be able to traverse every parent.
        tmp = Path(tempfile.mkdtemp(prefix="x402-pg-", dir="/tmp"))
        os.chown(tmp, account.pw_uid, account.pw_gid)
        return tmp

    def _command(self, program: str, *args: str) -> list[str]:
        assert self._bin_dir is not None
        argv = [str(self._bin_dir / program), *args]
        if self._as_root():
            runuser = shutil.which("runuser") or "runuser"
            return [runuser, "-u", SYSTEM_USER, "--", *argv]
        return argv

    def _run(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        # A clean environment for the PostgreSQL tools: no PG* variables from the caller (PGDATA,
        # PGOPTIONS, PGPASSWORD...) and a cwd the postgres user can enter.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            self._command(program, *args),
            cwd=self._tmp_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _initdb(self) -> None:
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--auth-local",
            "reject",
            "--auth-host",
            "trust",
            "--no-sync",
            timeout=_INITDB_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        # Trust, and only for TCP from 127.0.0.1: no Unix-socket and no IPv6 entries.
        self._write_existing(
            self.data_dir / "pg_hba.conf",
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "host    all       all   127.0.0.1/32  trust\n",
        )

    def _write_existing(self, path: Path, text: str) -> None:
        # Rewrites in place, so that a file initdb made keeps its owner (postgres) when we are root.
        with path.open("w", encoding="utf-8") as f:
            f.write(text)

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self._tmp_dir),
            **self._settings,
        }
        lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        self._write_existing(self.data_dir / "postgresql.auto.conf", "\n".join(lines) + "\n")

    def _start_postmaster(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port()
            self._write_settings()
            try:
                result = self._run(
                    "pg_ctl",
                    "start",
                    "--pgdata",
                    str(self.data_dir),
                    "--log",
                    str(self.log_path),
                    "--wait",
                    "--timeout",
                    str(_START_TIMEOUT_S),
                    timeout=_START_TIMEOUT_S + 10,
                )
            except subprocess.TimeoutExpired:
                raise RuntimeError(self._start_failure("pg_ctl start timed out")) from None
            if result.returncode == 0:
                self._running = True
                return
            log = self._log_tail()
            # Another process took the port between free_port() and the bind: try another one.
            if attempt < _PORT_ATTEMPTS and "could not bind" in log:
                continue
            raise RuntimeError(
                self._start_failure(
                    f"pg_ctl start failed (exit {result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )
            )

    def _start_failure(self, what: str) -> str:
        return f"{what}\n--- tail of {self.log_path}:\n{self._log_tail()}"

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _stop_postmaster(self) -> None:
        try:
            result = self._run(
                "pg_ctl",
                "stop",
                "--pgdata",
                str(self.data_dir),
                "--mode",
                "immediate",
                "--wait",
                "--timeout",
                str(_STOP_TIMEOUT_S),
                timeout=_STOP_TIMEOUT_S + 10,
            )
            stopped = result.returncode == 0
        except subprocess.TimeoutExpired:
            stopped = False
        if not stopped:
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        """The fallback when pg_ctl stop fails: SIGKILL the postmaster named in postmaster.pid."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def _psql(self, database: str, sql: str) -> None:
        assert self._bin_dir is not None
        psql = self._bin_dir / "psql"
        if not os.access(psql, os.X_OK):
            raise RuntimeError(f"{psql} not found: {_INSTALL_HINT}")
        # psql is a client: it runs as us, over TCP (the only thing pg_hba.conf lets in).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [
                str(psql),
                "--no-psqlrc",
                "--quiet",
                "--set",
                "ON_ERROR_STOP=1",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--username",
                self.user,
                "--dbname",
                database,
                "--command",
                sql,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PSQL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed (exit {result.returncode}): {result.stderr}")
