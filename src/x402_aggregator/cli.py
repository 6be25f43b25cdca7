"""The ``x402-aggregator`` command: parse options into a :class:`Config`, then hand over."""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import logs
from ._version import __version__
from .config import CONFIG_ENV, Config, load_config
from .errors import ConfigError, TransportError, UpstreamAuthError
from .ledger import STATES, Ledger, LedgerError, Record
from .ledger.schema import MIGRATIONS
from .secrets import check_secrets, read_secrets
from .transport import AiohttpTransport
from .upstream import Upstream

#: Exit codes, named like uvicorn's.
STARTUP_FAILURE = 3
UPSTREAM_UNREACHABLE = 1
#: ``check``: an upstream refused our credentials (told apart from the network failing).
UPSTREAM_AUTH_FAILED = 4
AUTH_FAILED_STATUS = "auth failed"
T = TypeVar("T")

app = typer.Typer(
    name="x402-aggregator",
    help="One x402 facilitator endpoint in front of many.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help="YAML configuration file. Without one, public facilitators are used.",
        dir_okay=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"x402-aggregator {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """One x402 facilitator endpoint in front of many."""


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the config).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the config).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every HTTP request.")] = False,
) -> None:
    """Serve the aggregator: a facilitator API at http://HOST:PORT."""
    if host is not None:
        os.environ["X402_AGGREGATOR_SERVER__HOST"] = host
    if port is not None:
        os.environ["X402_AGGREGATOR_SERVER__PORT"] = str(port)
    if config is not None:
        # Worker processes rebuild the configuration from the environment.
        os.environ[CONFIG_ENV] = str(config)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Counters of every worker are summed on /metrics through these files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="x402-aggregator-metrics-")
    settings = _load(config)
    try:
        check_secrets(settings)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None
    level = settings.server.log_level
    logs.configure(level, settings.server.log_format)
    names = ", ".join(u.name for u in settings.upstreams if u.enabled)
    err.print(f"x402-aggregator {__version__}: upstreams {names}", highlight=False)
    try:
        uvicorn.run(
            "x402_aggregator.server:app_from_environment",
            factory=True,
            host=settings.server.host,
            port=settings.server.port,
            workers=workers,
            log_level=level,
            log_config=None,  # ours (text or JSON), set up here and in each worker
            access_log=access_log,
            http="httptools",
            loop="uvloop" if os.name != "nt" else "asyncio",
            # In-flight settles must finish: cutting one off loses its outcome.
            timeout_graceful_shutdown=math.ceil(settings.routing.settle_deadline_s) + 5,
        )
    except ConfigError as exc:  # e.g. an auth variable that is not set
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write it.", dir_okay=False)] = Path(
        "x402-aggregator.yaml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter configuration (public facilitators, SQLite ledger)."""
    if path.exists() and not force:
        err.print(f"[red]error:[/red] {path} exists; pass --force to overwrite it")
        raise typer.Exit(1)
    starter = resources.files("x402_aggregator").joinpath("templates/starter.yaml").read_text()
    path.write_text(starter, encoding="utf-8")
    err.print(f"wrote {path}; next: x402-aggregator check --config {path}", highlight=False)


ledger_app = typer.Typer(help="Read the settlement ledger (works while the service is down).")
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("list")
def ledger_list(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help=f"Only records in this state ({', '.join(STATES)}).")
    ] = None,
    transaction: Annotated[str | None, typer.Option(help="Only the record of this tx.")] = None,
    payer: Annotated[str | None, typer.Option(help="Only this payer's records.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List settlement records, newest first."""
    if state is not None and state not in STATES:
        err.print(f"[red]error:[/red] --state must be one of {', '.join(STATES)}")
        raise typer.Exit(2)
    settings = _load(config)

    async def find(ledger: Ledger) -> list[Record]:
        return await ledger.find(state=state, transaction=transaction, payer=payer, limit=limit)

    records = _with_ledger(settings, find)
    if as_json:
        for record in records:
            typer.echo(orjson.dumps(record.public()).decode())
        return
    table = Table(title=f"settlements ({len(records)})")
    for column in ("id", "state", "upstream", "transaction", "created", "note"):
        table.add_column(column, overflow="fold")
    for record in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created_at))
        table.add_row(
            record.id,
            record.state,
            record.upstream or "-",
            record.transaction or "-",
            created,
            record.note or "",
        )
    Console().print(table)


@ledger_app.command("show")
def ledger_show(
    settlement_id: Annotated[str, typer.Argument(help="The payment's id (X402-Settlement-Id).")],
    config: ConfigOption = None,
) -> None:
    """Show one settlement record with every attempt, as JSON."""
    settings = _load(config)

    async def get(ledger: Ledger) -> Record | None:
        return await ledger.get(settlement_id)

    record = _with_ledger(settings, get)
    if record is None:
        err.print(f"no settlement with id {settlement_id!r}")
        raise typer.Exit(1)
    typer.echo(orjson.dumps(record.public(), option=orjson.OPT_INDENT_2).decode())


def _with_ledger(settings: Config, action: Callable[[Ledger], Awaitable[T]]) -> T:
    """Open the configured ledger (without announcing an instance), run ``action``, close."""

    async def run() -> T:
        ledger = Ledger.from_url(read_secrets(settings, server=False).ledger_url)
        try:
            await ledger.db.migrate(MIGRATIONS)
            return await action(ledger)
        finally:
            await ledger.db.aclose()

    try:
        return asyncio.run(run())
    except (LedgerError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None


@app.command()
def check(config: ConfigOption = None) -> None:
    """Probe every upstream's /supported and print what each one offers."""
    settings = _load(config)
    try:
        rows = asyncio.run(_probe_all(settings))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(STARTUP_FAILURE) from None
    table = Table(title="upstreams")
    for column in ("name", "url", "status", "latency", "kinds or error"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    statuses = {row[2] for row in rows}
    if AUTH_FAILED_STATUS in statuses:
        raise typer.Exit(UPSTREAM_AUTH_FAILED)
    if statuses != {"ok"}:
        raise typer.Exit(UPSTREAM_UNREACHABLE)


async def _probe_all(config: Config) -> list[tuple[str, str, str, str, str]]:
    transport = AiohttpTransport()
    try:
        upstreams = [Upstream(u, transport) for u in config.upstreams]
        return await asyncio.gather(*(_probe(u, config.health.timeout_s) for u in upstreams))
    finally:
        await transport.aclose()


async def _probe(upstream: Upstream, timeout_s: float) -> tuple[str, str, str, str, str]:
    started = time.perf_counter()
    try:
        caps = await upstream.probe(timeout_s)
    except UpstreamAuthError as exc:  # reached, but it refused our key: fix the key
        return (upstream.name, upstream.display_url, AUTH_FAILED_STATUS, "-", str(exc))
    except TransportError as exc:  # the network: DNS, refused, timeout, TLS
        return (upstream.name, upstream.display_url, "unreachable", "-", str(exc))
    except ValueError as exc:  # it answered, but not with a /supported document
        return (upstream.name, upstream.display_url, "bad answer", "-", str(exc))
    latency = f"{(time.perf_counter() - started) * 1000:.0f} ms"
    labels = caps.describe()
    kinds = ", ".join(labels[:4]) + (f" (+{len(labels) - 4})" if len(labels) > 4 else "")
    return (upstream.name, upstream.display_url, "ok", latency, kinds or "none")


@app.command()
def demo(
    payments: Annotated[int, typer.Option(min=1, max=50, help="Payments before the failover.")] = 3,
    port: Annotated[int, typer.Option(help="Aggregator port (0: any free port).")] = 0,
    keep: Annotated[bool, typer.Option(help="Leave everything running until Ctrl-C.")] = False,
    payment: Annotated[
        str,
        typer.Option(
            help="Payment kind: eip3009 (USDC on anvil), svm (an SPL token on a Solana VM), "
            "permit2 (exact by Permit2, a plain ERC-20) or upto (Permit2, settled below a maximum)."
        ),
    ] = "eip3009",
) -> None:
    """Run real payments through the aggregator on a local chain with two real facilitators."""
    try:
        from .demo import DemoError, DemoPayment, run
        from .localnet.npm import TestbedSetupError
        from .localnet.process import ProcessError
    except ImportError as exc:
        # Escaped: rich would take "[testbed]" for a style tag and print "pip install -e '.'".
        hint = escape(f"{exc}: install the test bed with `pip install -e '.[testbed]'`")
        err.print(f"[red]demo failed:[/red] {hint} and `npm ci`", highlight=False)
        raise typer.Exit(1) from None

    try:
        kind = DemoPayment(payment)
    except ValueError:
        choices = ", ".join(kind.value for kind in DemoPayment)
        err.print(f"[red]demo failed:[/red] --payment must be one of {choices}", highlight=False)
        raise typer.Exit(2) from None
    console = Console()
    try:
        summary = run(console, payments=payments, port=port, keep=keep, payment=kind)
    except (DemoError, TestbedSetupError, ProcessError) as exc:
        console.print(f"[red]demo failed:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    print(summary, flush=True)  # one unwrapped line: scripts look for "demo ok:"


def main() -> None:
    app()
