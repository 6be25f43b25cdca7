"""Throughput: most verify/s through the aggregator vs nginx ``proxy_pass``, zero-latency upstream.

The upstream is nginx answering ``/verify`` and ``/supported`` from its configuration (a primary
and a backup port). Compared in one run, each loaded by ``wrk -t1 -c32`` on the load core:

- wrk straight to the upstream (what wrk and the loopback can do at all);
- nginx ``proxy_pass`` to an ``upstream`` block with a ``backup`` server and keep-alive;
- the aggregator, one process, with the same primary/backup pair;
- the aggregator with ``--workers 2``.

    python -m bench.throughput [--quick]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from x402_aggregator.localnet.live import free_port

from . import nginx, wrk
from .services import HOST, SUT_CPU, Service, pinning_available, start_aggregator
from .settings import Settings
from .workspace import run_section


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    name: str
    placement: str
    result: wrk.WrkResult


@dataclass(slots=True)
class ThroughputResult:
    rows: list[ThroughputRow]
    threads: int
    connections: int
    seconds: int

    def row(self, name: str) -> ThroughputRow | None:
        return next((r for r in self.rows if r.name == name), None)


UPSTREAM = "nginx upstream, direct"
NGINX = "nginx proxy_pass + backup"
AGGREGATOR = "aggregator, 1 process"
AIOHTTP = "aggregator, 1 process, aiohttp client"
WORKERS = "aggregator, --workers 2"


def _measure(
    settings: Settings, workdir: Path, url: str, slug: str, watch: dict[str, Service]
) -> wrk.WrkResult:
    groups = {name: service.processes() for name, service in watch.items()}

    def once(name: str, seconds: int) -> wrk.WrkResult:
        return wrk.run(
            url,
            workdir,
            name,
            seconds=seconds,
            threads=settings.wrk_threads,
            connections=settings.wrk_connections,
            watch=groups,
        )

    if settings.wrk_warmup_seconds:
        once(f"wrk-warm-{slug}", settings.wrk_warmup_seconds)
    return once(f"wrk-{slug}", settings.wrk_seconds)


def run(settings: Settings, workdir: Path) -> ThroughputResult:
    lifetime = 8 * (settings.wrk_seconds + settings.wrk_warmup_seconds) + 120
    primary, backup, proxy = free_port(), free_port(), free_port()
    pin = "core 1" if pinning_available() else "unpinned"
    upstream = nginx.start(
        "nginx-upstream",
        workdir,
        nginx.facilitator_servers(primary, backup),
        [primary, backup],
        cpu=SUT_CPU,
        lifetime_s=lifetime,
    )
    rows: list[ThroughputRow] = []
    try:
        url = f"http://{HOST}:{primary}/verify"
        result = _measure(settings, workdir, url, "upstream", {"upstream": upstream})
        rows.append(ThroughputRow(UPSTREAM, f"upstream {pin}", result))

        proxy_nginx = nginx.start(
            "nginx-proxy",
            workdir,
            nginx.proxy_server(proxy, primary, backup),
            [proxy],
            cpu=SUT_CPU,
            lifetime_s=lifetime,
        )
        try:
            url = f"http://{HOST}:{proxy}/verify"
            watch = {"proxy": proxy_nginx, "upstream": upstream}
            result = _measure(settings, workdir, url, "nginx-proxy", watch)
        finally:
            proxy_nginx.stop()
        rows.append(ThroughputRow(NGINX, f"proxy + upstream {pin}", result))

        upstreams = [
            {"name": "primary", "url": f"http://{HOST}:{primary}", "priority": 0},
            {"name": "backup", "url": f"http://{HOST}:{backup}", "priority": 1},
        ]
        for name, workers, cpu, client, placement in (
            (AGGREGATOR, 1, SUT_CPU, "http1", f"aggregator + upstream {pin}"),
            (AIOHTTP, 1, SUT_CPU, "aiohttp", f"aggregator + upstream {pin}"),
            (WORKERS, 2, None, "http1", "workers on both cores (shared with wrk), upstream " + pin),
        ):
            agg = start_aggregator(
                f"aggregator-w{workers}-{client}",
                workdir,
                upstreams,
                server={"upstream_client": client},
                workers=workers,
                cpu=cpu,
                lifetime_s=lifetime,
            )
            try:
                time.sleep(0.5)
                watch = {"proxy": agg, "upstream": upstream}
                url = f"{agg.url}/verify"
                result = _measure(settings, workdir, url, f"aggregator-w{workers}-{client}", watch)
            finally:
                agg.stop()
            rows.append(ThroughputRow(name, placement, result))
    finally:
        upstream.stop()
    return ThroughputResult(
        rows, settings.wrk_threads, settings.wrk_connections, settings.wrk_seconds
    )


def main() -> None:
    from .report import throughput_section

    result = run_section(__doc__, run)
    print(throughput_section(result))


if __name__ == "__main__":
    main()
