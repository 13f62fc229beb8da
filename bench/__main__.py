"""``make bench``: every benchmark, one after the other."""

from bench import latency, sync

if __name__ == "__main__":
    latency.main()
    sync.main()
