"""Benchmarks: they print figures and write them to bench/results/; they never pass or fail."""
