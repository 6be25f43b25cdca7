"""The benchmark suite of x402-aggregator: ``python -m bench [--quick]``.

Sections (one module each): ``overhead`` (open-loop added latency), ``throughput`` (wrk against
the aggregator and nginx), ``faults`` (primary hangs / 500s / stops under load), ``settle``
(real payments on the local test bed), ``ledger`` (settles/s and latency by settlement-ledger
database), ``memory`` (RSS) and ``hotpath`` (py-spy profile).
Everything listens on 127.0.0.1; every loop is bounded by count or time and every process has a
bounded lifetime (``x402_aggregator.localnet.process.spawn``).
"""
