"""marveld: a caching gRPC proxy for the Marvel Comics API.

Run it with ``marveld serve`` (or ``python -m marveld serve``); ``marveld sim`` starts the
Marvel-compatible upstream simulator. See README.md.
"""

__version__ = "0.1.0"
