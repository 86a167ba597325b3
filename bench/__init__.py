"""``make bench``: measured speed and memory of tradingd, side by side with cryptofeed.

Entry point: ``python -m bench.run --full|--quick`` (see ``bench.run`` and BENCHMARKS.md).
Everything runs offline: fixture frames are generated here, exchanges are the fakes in
``tradingd.testing`` on loopback, PostgreSQL and Redis are the embedded servers.
"""
