"""``make bench``: every benchmark, one after the other. ``--quick``: smaller runs, to check
that everything is wired."""

import argparse

from bench import arenas, backends, cache, latency, notifications, replicas, security, sync

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check wiring")
    args = parser.parse_args()
    latency.main(["--hits", "300", "--misses", "50"] if args.quick else [])
    cache.main(["--quick"] if args.quick else [])
    security.main(["--logins", "5", "--verifies", "2000", "--calls", "200"] if args.quick else [])
    sync.main([])
    notifications.main(["--subscribers", "200", "--replay", "5000"] if args.quick else [])
    arenas.main(["--quick", "--rounds", "2"] if args.quick else [])
    backends.main(["--quick", "--rounds", "2"] if args.quick else [])
    replicas.main(["--quick"] if args.quick else [])
