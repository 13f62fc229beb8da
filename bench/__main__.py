"""``make bench``: every benchmark, one after the other."""

from bench import latency, security

if __name__ == "__main__":
    latency.main()
    security.main([])
