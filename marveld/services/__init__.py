"""Use cases: accounts and tokens, characters through the cache."""
