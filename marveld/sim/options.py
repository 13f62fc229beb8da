"""The simulator's settings: a frozen, validated dataclass and its command-line form."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from marveld.sim.faults import Fault, FaultPlan, parse_fault_arguments

DEFAULT_HOST = "127.0.0.1"
DEFAULT_CLI_PORT = 8089
DEFAULT_PUBLIC_KEY = "sim-public"
DEFAULT_PRIVATE_KEY = "sim-private"
MAX_CHURN = 60_000.0


@dataclass(frozen=True)
class SimOptions:
    """How to run the simulator. Invalid values raise ValueError naming the field."""

    host: str = DEFAULT_HOST
    port: int = 0
    dataset: Path | None = None
    latency_ms: float = 0.0
    fail_rate: float = 0.0
    daily_limit: int | None = None
    webhook_url: str | None = None
    public_key: str = DEFAULT_PUBLIC_KEY
    private_key: str = DEFAULT_PRIVATE_KEY
    seed: int = 0
    # The HMAC key of the webhooks it sends (MARVELD_WEBHOOK_SECRET).
    webhook_secret: str | None = field(default=None, repr=False)
    churn: float = 0.0  # random changes a minute, 0 for none
    # Faults injected into character calls, as (fault, share of calls): see faults.py.
    faults: tuple[tuple[Fault, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if not self.latency_ms >= 0:  # also refuses NaN
            raise ValueError(f"latency_ms must be >= 0, not {self.latency_ms}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {self.fail_rate}")
        if self.daily_limit is not None and self.daily_limit < 0:
            raise ValueError(f"daily_limit must be >= 0, not {self.daily_limit}")
        if not self.public_key or not self.private_key:
            raise ValueError("public_key and private_key must not be empty")
        if self.webhook_url is not None and not self.webhook_secret:
            raise ValueError("webhook_url needs a webhook_secret (MARVELD_WEBHOOK_SECRET)")
        if not 0 <= self.churn <= MAX_CHURN:  # also refuses NaN
            raise ValueError(f"churn must be 0..{MAX_CHURN} changes a minute, not {self.churn}")
        FaultPlan(rates=dict(self.faults))  # raises ValueError naming the fault
        if self.fail_rate + sum(rate for _, rate in self.faults) > 1.0 + 1e-9:
            raise ValueError("fail_rate and the fault rates add up to more than 1")


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``marveld sim`` options. Keys are not options: they come from the environment."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_CLI_PORT, help="port to listen on (0 picks one)"
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="JSON array of Marvel character objects (default: a generated catalogue)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to each character call"
    )
    parser.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="share (0..1) of character calls answered 500 or with a dropped connection",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="share (0..1) of character calls that get fault KIND; repeatable. Kinds: "
        + ", ".join(f.value for f in Fault)
        + ". Also settable at run time: PUT /_sim/faults",
    )
    parser.add_argument(
        "--daily-limit",
        type=int,
        default=None,
        help="calls per public key per UTC day before 429 (default: unlimited)",
    )
    parser.add_argument(
        "--webhook-url",
        default=None,
        help="where to POST signed change webhooks (needs MARVELD_WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="random changes a minute (each sends a webhook), for demos; seeded by --seed",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for failures and the generated catalogue"
    )


def options_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> SimOptions:
    """Options from parsed arguments; keys from ``MARVEL_PUBLIC_KEY`` / ``MARVEL_PRIVATE_KEY``
    (or their ``*_FILE`` variants) in ``env``, else the simulator's default keys; the
    webhook key from ``MARVELD_WEBHOOK_SECRET`` (or ``_FILE``)."""
    return SimOptions(
        host=args.host,
        port=args.port,
        dataset=args.dataset,
        latency_ms=args.latency_ms,
        fail_rate=args.fail_rate,
        daily_limit=args.daily_limit,
        webhook_url=args.webhook_url,
        public_key=_secret(env, "MARVEL_PUBLIC_KEY") or DEFAULT_PUBLIC_KEY,
        private_key=_secret(env, "MARVEL_PRIVATE_KEY") or DEFAULT_PRIVATE_KEY,
        seed=args.seed,
        webhook_secret=_secret(env, "MARVELD_WEBHOOK_SECRET"),
        churn=args.churn,
        faults=tuple(parse_fault_arguments(args.fault).items()),
    )


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``env[name]``, or the trimmed content of the file named by ``env[name + "_FILE"]``."""
    direct = env.get(name, "").strip()
    file_name = env.get(f"{name}_FILE", "").strip()
    if direct and file_name:
        raise ValueError(f"set {name} or {name}_FILE, not both")
    if file_name:
        try:
            value = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{name}_FILE: cannot read {file_name}: {exc.strerror}") from exc
        if not value:
            raise ValueError(f"{name}_FILE: {file_name} is empty")
        return value
    return direct or None
