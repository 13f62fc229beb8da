"""``make reliability``: every suite, full size, one after the other; ``--short``: the CI
size of each. Exit status 1 when any suite found a problem (each still runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

SUITES = ("faults", "crash", "concurrency", "soak", "hostile")
SHORT = {name: ["--short"] for name in SUITES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--short", action="store_true", help="the CI size of each suite")
    parser.add_argument(
        "suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)} (default: all)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    failed = []
    for name in args.suites or SUITES:
        suite = importlib.import_module(f"reliability.{name}")
        if suite.main(SHORT[name] if args.short else []) != 0:
            failed.append(name)
    print(f"\nreliability: {len(args.suites or SUITES) - len(failed)} suite(s) passed", end="")
    print(f"; FAILED: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
