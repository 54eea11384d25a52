"""HealthService on stand-in checks (no I/O): concurrent, bounded by one timeout, never piling up."""

from __future__ import annotations

import threading
import time

from webapp.services.health import HealthService

SECRET_PASSWORD = "hunter2-not-in-any-answer"


def test_checks_run_concurrently_and_the_slowest_costs_only_the_timeout():
    def hang(timeout: float) -> None:
        time.sleep(timeout * 3)

    health = HealthService(required={"database": hang}, optional={"cache": hang}, timeout=0.3)
    try:
        started = time.monotonic()
        healthy, checks = health.check()
        elapsed = time.monotonic() - started
    finally:
        health.close()
    assert (healthy, checks) == (False, {"database": "timeout", "cache": "timeout"})
    assert elapsed < 0.3 + 0.25  # one timeout for both, not one each


def test_a_driver_error_is_reported_by_its_class_only():
    def fail(timeout: float) -> None:
        raise OSError(f"could not connect to postgresql://postgres:{SECRET_PASSWORD}@db:5432/app")

    health = HealthService(required={"database": fail}, optional={}, timeout=0.3)
    try:
        assert health.check() == (False, {"database": "unavailable: OSError"})
    finally:
        health.close()


def test_probes_of_a_hung_dependency_share_the_check_in_flight_instead_of_starting_more():
    release = threading.Event()
    calls: list[float] = []

    def hung(timeout: float) -> None:
        calls.append(timeout)
        release.wait(5)  # a check that ignores its timeout: only release ends it

    def answers(timeout: float) -> None:
        return None

    # The quick check leaves a probe thread free: a second hung check could start on it, so only
    # sharing the check in flight keeps the count at one (with every thread busy, a new one would queue).
    health = HealthService(required={"database": hung}, optional={"cache": answers}, timeout=0.1)
    try:
        probes = [health.check() for _ in range(5)]
        assert len(calls) == 1  # one check in flight per dependency, however many probes came
        assert probes == [(False, {"database": "timeout", "cache": "ok"})] * 5  # the hung one starves no other
        release.set()
        deadline = time.monotonic() + 2
        while len(calls) < 2:  # once it has ended, the next probe starts a fresh check
            health.check()
            assert time.monotonic() < deadline, "no new check after the hung one ended"
    finally:
        release.set()
        health.close()
