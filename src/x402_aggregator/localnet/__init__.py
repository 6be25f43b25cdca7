"""A local x402 network and fakes, for the tests, the benchmarks and the demo.

The real network: an anvil chain with Circle's USDC (``chain``), the Python and TypeScript SDK
facilitators (``facilitators``, ``py_facilitator``, ``ts_facilitator.cjs``), a payer (``payer``),
all as bounded child processes (``process``) and brought up together by ``network.TestBed``.
The fakes: scriptable facilitators (``fake_facilitator``, ``jwt_facilitator``), payment bodies
(``payloads``), the aggregator on a real loopback port (``live``) and headless Chromium
(``browser``). Nothing here is used by ``serve``.
"""
