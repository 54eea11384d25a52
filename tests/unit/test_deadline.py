"""Deadline: one request's time budget, read on an injectable clock."""

from __future__ import annotations

import time

import pytest

from webapp.resilience import Deadline


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_remaining_counts_down_as_the_clock_advances() -> None:
    clock = FakeClock()
    deadline = Deadline(2.0, clock=clock)
    assert deadline.remaining() == pytest.approx(2.0)
    clock.now += 0.5
    assert deadline.remaining() == pytest.approx(1.5)


def test_remaining_is_never_negative_after_the_deadline_has_passed() -> None:
    clock = FakeClock()
    deadline = Deadline(1.0, clock=clock)
    clock.now += 5.0
    assert deadline.remaining() == 0.0


def test_expired_is_false_before_the_deadline_and_true_from_the_deadline_on() -> None:
    clock = FakeClock()
    deadline = Deadline(1.0, clock=clock)
    clock.now += 0.999
    assert not deadline.expired()
    clock.now += 0.001
    assert deadline.expired()
    clock.now += 10.0
    assert deadline.expired()


def test_default_clock_is_the_real_monotonic_clock() -> None:
    deadline = Deadline(10.0)
    assert 9.0 < deadline.remaining() <= 10.0
    time.sleep(0.02)
    assert deadline.remaining() <= 10.0 - 0.02
