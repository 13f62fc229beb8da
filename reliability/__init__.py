"""Reliability suites: upstream faults, crashes, concurrency and a soak, each against real
``marveld sim`` and ``marveld serve`` processes. Each prints its figures, writes them to
``reliability/results/<suite>.json`` and exits 1 when an invariant failed.

    .venv/bin/python -m reliability            # every suite, full size (make reliability)
    .venv/bin/python -m reliability --short    # every suite, CI size
    .venv/bin/python -m reliability.crash --rounds 50
"""
