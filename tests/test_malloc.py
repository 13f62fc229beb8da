"""The daemon caps glibc's malloc arenas (marveld/malloc.py) unless the operator chose."""

from __future__ import annotations

import platform

import pytest

from marveld.malloc import limit_arenas

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt(M_ARENA_MAX) is glibc's"
)


@glibc_only
def test_the_arenas_are_capped_when_the_environment_says_nothing() -> None:
    assert limit_arenas({}) is True


def test_malloc_arena_max_in_the_environment_is_left_to_glibc() -> None:
    assert limit_arenas({"MALLOC_ARENA_MAX": "8"}) is False
