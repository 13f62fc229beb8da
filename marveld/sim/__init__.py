"""``marveld sim``: a real HTTP server with the Marvel Comics API's semantics.

Marvel retired its developer API in 2025; marveld still speaks the real protocol and ships
this simulator as its upstream for the demo, the tests and the benchmarks. It serves
``GET /v1/public/characters`` and ``/v1/public/characters/{id}`` with Marvel's auth, errors,
envelope, etag and gzip, a daily quota, and injected latency and failures, plus
``GET /_sim/stats`` and webhook simulation (``POST /_sim/characters[/{id}]`` changes a
character and sends a signed webhook; ``--churn``). Start it with
``await nursery.start(run_sim, SimOptions(...))``.
"""

from __future__ import annotations

from marveld.sim.auth import marvel_hash
from marveld.sim.catalogue import DatasetError
from marveld.sim.options import SimOptions, add_sim_arguments, options_from_args
from marveld.sim.run import SimHandle, run_sim
from marveld.sim.state import SimState

__all__ = [
    "DatasetError",
    "SimHandle",
    "SimOptions",
    "SimState",
    "add_sim_arguments",
    "marvel_hash",
    "options_from_args",
    "run_sim",
]
