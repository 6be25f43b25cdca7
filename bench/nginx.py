"""nginx for the throughput section: a zero-latency facilitator and a ``proxy_pass`` baseline.

Each instance runs in the foreground (``daemon off; master_process off;``, one worker) from a
generated configuration in its own directory (``-p DIR -c DIR/nginx.conf``), under ``spawn``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from x402_aggregator.localnet.payloads import PAYER
from x402_aggregator.localnet.process import spawn

from .services import HOST, Service, pinned, wait_port

VERIFY_ANSWER = f'{{"isValid":true,"payer":"{PAYER}"}}'
SUPPORTED_ANSWER = (
    '{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"}],'
    '"extensions":[],"signers":{}}'
)


def binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError("nginx is not installed")
    return found


def version() -> str:
    out = subprocess.run([binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stderr or out.stdout).strip().split("/")[-1]


def _main_conf(prefix: Path, http_body: str) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{temp}
{http_body}
}}
"""


def facilitator_servers(*ports: int) -> str:
    """Zero-work facilitators: ``/verify`` and ``/supported`` answered from the config."""
    blocks = []
    for port in ports:
        blocks.append(
            f"""    server {{
        listen {HOST}:{port} reuseport backlog=4096;
        default_type application/json;
        location = /verify {{ return 200 '{VERIFY_ANSWER}'; }}
        location = /supported {{ return 200 '{SUPPORTED_ANSWER}'; }}
    }}"""
        )
    return "\n".join(blocks)


def proxy_server(port: int, primary: int, backup: int) -> str:
    """``proxy_pass`` to ``primary`` with ``backup`` as nginx's failover, keep-alive upstream."""
    return f"""    upstream u {{
        server {HOST}:{primary};
        server {HOST}:{backup} backup;
        keepalive 64;
    }}
    server {{
        listen {HOST}:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://u;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start(
    name: str,
    workdir: Path,
    http_body: str,
    ports: list[int],
    *,
    cpu: int | None,
    lifetime_s: float,
) -> Service:
    """Run nginx with ``http_body`` inside its ``http {}``; returns once ``ports`` accept."""
    prefix = workdir / name
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_main_conf(prefix, http_body))
    argv = [binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    child = spawn(name, pinned(argv, cpu), lifetime_s=lifetime_s, log_dir=workdir)
    for port in ports:
        wait_port(port, child)
    return Service(name, ports[0], child)
