"""Test rules: loopback only, port 0 everywhere, real servers started with ``nursery.start``,
a time bound on every test (pytest-timeout, see pyproject.toml), no sleeps for readiness."""
