"""The live simulator: its catalogue, the knobs tests may turn while it runs, and counters."""

from __future__ import annotations

import random

import trio

from marveld.sim.auth import Clock, DailyQuota, utc_now
from marveld.sim.catalogue import Catalogue
from marveld.sim.faults import Fault, FaultPlan
from marveld.sim.options import SimOptions

# Webhooks waiting to be sent; past this many the newest are dropped (with a warning).
WEBHOOK_QUEUE = 1000


class SimState:
    """Everything that changes while the simulator runs. Created by ``run_sim``.

    ``latency_ms``, ``fail_rate``, ``plan`` (the faults of ``faults.py``), ``daily_limit``,
    ``webhook_url`` and ``webhook_secret`` may be changed at run time. The counters:
    ``requests`` (character API calls received, refused ones included), ``served`` (200
    and 304 answers), ``throttled`` (429s),
    ``failed`` (injected faults of any kind), ``changes`` (characters changed or
    added), ``webhooks_sent`` (answered 2xx) and ``webhooks_failed`` (given up).
    """

    def __init__(self, catalogue: Catalogue, options: SimOptions, clock: Clock = utc_now) -> None:
        self.catalogue = catalogue
        self.public_key = options.public_key
        self.private_key = options.private_key
        self.latency_ms = options.latency_ms
        self.fail_rate = options.fail_rate
        self.plan = FaultPlan(rates=dict(options.faults))
        self.daily_limit = options.daily_limit
        self.webhook_url = options.webhook_url
        self.webhook_secret = options.webhook_secret
        self.clock = clock
        self.quota = DailyQuota(clock)
        self.requests = 0
        self.served = 0
        self.throttled = 0
        self.failed = 0
        self.changes = 0
        self.webhooks_sent = 0
        self.webhooks_failed = 0
        self._rng = random.Random(options.seed)
        self.webhook_queue, self.webhook_backlog = trio.open_memory_channel[bytes](WEBHOOK_QUEUE)

    def roll_fault(self, *, conditional: bool = False) -> Fault | None:
        """One draw per call, so a seed gives the same sequence of failures: the plan's
        script first; else with probability ``fail_rate`` a 500 or a reset (half each);
        else the plan's rates. A lying etag needs a ``conditional`` request to lie to."""
        draw = self._rng.random()
        fault: Fault | None
        if not self.plan.script and draw < self.fail_rate:
            fault = Fault.RESET if draw < self.fail_rate / 2 else Fault.ERROR
        else:
            rest = 1.0 - self.fail_rate
            fault = self.plan.pick((draw - self.fail_rate) / rest if rest > 0 else 1.0)
        if fault is Fault.LYING_ETAG and not conditional:
            return None
        if fault is not None:
            self.plan.injected[fault.value] += 1
        return fault

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "served": self.served,
            "throttled": self.throttled,
            "failed": self.failed,
        }
