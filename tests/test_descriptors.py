"""The open file limit is raised to what the connection caps need, within the hard limit.
Each test lowers this process's soft limit (never the hard one) and puts it back."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from marveld.descriptors import RESERVE, ensure_descriptors


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open file limit here is {hard}; the tests need 4096")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except PermissionError:  # .ci/sandbox.py: the unit's ~@resources rule, as under systemd
        pytest.skip("setrlimit is filtered here (the unit sets LimitNOFILE instead)")
    yield soft, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_a_low_soft_limit_is_raised_to_what_the_caps_need(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, limits[1]))
    with caplog.at_level(logging.INFO, "marveld.descriptors"):
        assert ensure_descriptors(2000) == 2000 + RESERVE == soft_limit()
    assert "raised from 1024 to 2256" in caplog.text


def test_a_hard_limit_too_low_is_used_whole_and_warned_about(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, limits[1]))
    hard = limits[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open file limit here")
    assert ensure_descriptors(hard) == hard == soft_limit()
    assert "raise LimitNOFILE" in caplog.text


def test_a_high_enough_limit_is_left_alone(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, limits[1]))
    assert ensure_descriptors(1000) == 4096 == soft_limit()
    assert caplog.text == ""
