"""CircuitBreaker: closed -> open after consecutive failures, one trial call in half-open."""

from __future__ import annotations

import logging
import threading

import pytest

from webapp.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    """The dependency is unreachable."""


class NotFound(Exception):
    """The dependency answered: the thing does not exist."""


def fail() -> None:
    raise Down("connection refused")


def ok() -> str:
    return "ok"


def make_breaker(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    return CircuitBreaker("redis", threshold=3, reset_after=10.0, clock=clock, **kwargs)  # type: ignore[arg-type]


def trip(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Down):
            breaker.call(fail)


def test_starts_closed_and_passes_arguments_and_results_through() -> None:
    breaker = make_breaker(FakeClock())
    assert breaker.state == CLOSED
    def add(a: int, b: int = 0) -> int:
        return a + b

    assert breaker.call(add, 2, b=3) == 5
    assert breaker.state == CLOSED


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = make_breaker(FakeClock())
    trip(breaker, 2)
    assert breaker.state == CLOSED
    trip(breaker, 1)
    assert breaker.state == OPEN


def test_a_success_resets_the_consecutive_failure_count() -> None:
    breaker = make_breaker(FakeClock())
    trip(breaker, 2)
    breaker.call(ok)
    trip(breaker, 2)
    assert breaker.state == CLOSED  # 2 + 2 failures, but never 3 in a row
    trip(breaker, 1)
    assert breaker.state == OPEN


def test_exceptions_that_are_not_failures_propagate_and_count_as_the_dependency_answering() -> None:
    breaker = make_breaker(FakeClock(), is_failure=lambda exc: not isinstance(exc, NotFound))
    trip(breaker, 2)
    missing = NotFound("user 7")

    def lookup() -> None:
        raise missing

    with pytest.raises(NotFound) as info:
        breaker.call(lookup)
    assert info.value is missing
    trip(breaker, 2)
    assert breaker.state == CLOSED  # the NotFound reset the count, like a success


def test_open_circuit_fails_fast_without_calling_fn() -> None:
    breaker = make_breaker(FakeClock())
    trip(breaker, 3)
    calls = []
    with pytest.raises(CircuitOpen) as info:
        breaker.call(lambda: calls.append(1))
    assert calls == []
    assert info.value.name == "redis"
    assert str(info.value) == "circuit 'redis' is open"


def test_stays_open_until_reset_after_and_state_reads_open_until_a_call_moves_it() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 9.999
    with pytest.raises(CircuitOpen):
        breaker.call(ok)
    clock.now += 0.001
    assert breaker.state == OPEN  # reading the state never moves it
    assert breaker.call(ok) == "ok"  # this call was the half-open trial
    assert breaker.state == CLOSED


def test_after_reset_after_the_next_call_runs_as_the_trial_in_half_open() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 10.0
    seen = []
    breaker.call(lambda: seen.append(breaker.state))
    assert seen == [HALF_OPEN]


def test_trial_success_closes_the_circuit_and_clears_the_failure_count() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 10.0
    breaker.call(ok)
    trip(breaker, 2)
    assert breaker.state == CLOSED  # a fresh count: it takes 3 new failures to open again


def test_trial_failure_reopens_the_circuit_with_a_fresh_reset_timer() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 15.0  # well past reset_after: the old timer must not be reused
    trip(breaker, 1)
    assert breaker.state == OPEN
    clock.now += 9.0
    with pytest.raises(CircuitOpen):
        breaker.call(ok)
    clock.now += 1.0
    assert breaker.call(ok) == "ok"
    assert breaker.state == CLOSED


def test_a_non_failure_exception_in_the_trial_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, is_failure=lambda exc: not isinstance(exc, NotFound))
    trip(breaker, 3)
    clock.now += 10.0

    def lookup() -> None:
        raise NotFound("user 7")

    with pytest.raises(NotFound):
        breaker.call(lookup)
    assert breaker.state == CLOSED


def test_keyboard_interrupt_in_the_trial_frees_the_slot_and_stays_half_open() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 10.0

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.state == HALF_OPEN
    assert breaker.call(ok) == "ok"  # the slot was freed: the next caller is the trial
    assert breaker.state == CLOSED


def test_a_raising_is_failure_still_frees_the_trial_slot() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, is_failure=lambda exc: 1 / 0)
    breaker._state, breaker._opened_at = OPEN, clock.now  # open it without calling is_failure
    clock.now += 10.0
    with pytest.raises(ZeroDivisionError):
        breaker.call(fail)
    assert breaker.call(ok) == "ok"
    assert breaker.state == CLOSED


def test_a_late_success_from_before_the_circuit_opened_neither_closes_it_nor_steals_the_trial_slot() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trial_started = threading.Event()
    release_trial = threading.Event()

    def probe() -> str:
        trial_started.set()
        release_trial.wait(timeout=5)
        return "recovered"

    trial = threading.Thread(target=breaker.call, args=(probe,))

    def slow_success() -> str:
        # While this call is in flight the circuit opens, cools off and starts its trial.
        trip(breaker, 3)
        clock.now += 10.0
        trial.start()
        assert trial_started.wait(timeout=5)
        return "late"

    try:
        assert breaker.call(slow_success) == "late"
        assert breaker.state == HALF_OPEN  # the stale success did not close it
        with pytest.raises(CircuitOpen):
            breaker.call(ok)  # and the trial still holds the only slot
    finally:
        release_trial.set()
        trial.join(timeout=5)
    assert breaker.state == CLOSED


def test_half_open_lets_exactly_one_trial_through_while_concurrent_callers_fail_fast() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    clock.now += 10.0

    trial_started = threading.Event()
    release = threading.Event()
    ran = []
    ran_lock = threading.Lock()

    def probe() -> str:
        with ran_lock:
            ran.append(threading.current_thread().name)
        trial_started.set()
        release.wait(timeout=5)  # any caller wrongly let through would also park here
        return "recovered"

    trial_result = []
    trial = threading.Thread(target=lambda: trial_result.append(breaker.call(probe)), name="trial")
    trial.start()
    assert trial_started.wait(timeout=5)
    assert breaker.state == HALF_OPEN

    outcomes: list[CircuitOpen | str] = []
    barrier = threading.Barrier(20)

    def concurrent_caller() -> None:
        barrier.wait(timeout=5)
        try:
            outcomes.append(breaker.call(probe))
        except CircuitOpen as exc:  # anything else kills the thread and fails the length check
            outcomes.append(exc)

    callers = [threading.Thread(target=concurrent_caller) for _ in range(20)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=5)
    stuck = [t for t in callers if t.is_alive()]

    release.set()
    trial.join(timeout=5)
    for t in stuck:
        t.join(timeout=5)

    assert stuck == [], "callers were let into fn while the trial was running"
    assert len(outcomes) == 20
    assert all(isinstance(o, CircuitOpen) for o in outcomes), outcomes
    assert ran == ["trial"]
    assert trial_result == ["recovered"]
    assert breaker.state == CLOSED


def test_each_transition_is_logged_exactly_once_at_the_right_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webapp.resilience")
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker, 3)
    for _ in range(5):  # refused calls are not transitions
        with pytest.raises(CircuitOpen):
            breaker.call(ok)
    clock.now += 10.0
    breaker.call(ok)

    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "webapp.resilience"]
    assert records == [
        (logging.WARNING, "circuit 'redis' opened after 3 consecutive failures"),
        (logging.INFO, "circuit 'redis' half-open: letting one trial call through"),
        (logging.INFO, "circuit 'redis' closed: the dependency answered the trial call"),
    ]


def test_on_transition_is_called_once_per_transition() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str, str]] = []
    breaker = make_breaker(clock, on_transition=lambda *args: seen.append(args))
    trip(breaker, 3)
    with pytest.raises(CircuitOpen):  # a refused call is not a transition
        breaker.call(ok)
    clock.now += 10.0
    trip(breaker, 1)  # trial fails: open again
    clock.now += 10.0
    breaker.call(ok)
    breaker.call(ok)  # closed -> closed is not a transition
    assert seen == [
        ("redis", CLOSED, OPEN),
        ("redis", OPEN, HALF_OPEN),
        ("redis", HALF_OPEN, OPEN),
        ("redis", OPEN, HALF_OPEN),
        ("redis", HALF_OPEN, CLOSED),
    ]


def test_a_failing_on_transition_callback_does_not_break_the_call(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, old: str, new: str) -> None:
        raise RuntimeError("metrics backend down")

    breaker = make_breaker(FakeClock(), on_transition=broken)
    trip(breaker, 3)  # the 3rd Down must still surface, not the callback's RuntimeError
    assert breaker.state == OPEN
    assert any("on_transition callback failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("threshold", "reset_after"), [(0, 1.0), (1, -1.0)])
def test_invalid_configuration_is_rejected(threshold: int, reset_after: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("redis", threshold=threshold, reset_after=reset_after)


def test_a_failure_recorded_outside_a_call_counts_towards_opening():
    clock = FakeClock()
    breaker = CircuitBreaker("db", threshold=2, reset_after=5, clock=clock)
    breaker.record_failure()
    assert breaker.state == CLOSED
    breaker.record_failure()
    assert breaker.state == OPEN
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: "not called")


def test_a_failure_recorded_while_the_trial_runs_reopens_and_the_trials_late_success_is_ignored():
    clock = FakeClock()
    breaker = CircuitBreaker("db", threshold=1, reset_after=5, clock=clock)
    breaker.record_failure()
    clock.now += 5

    def trial() -> str:
        breaker.record_failure()  # e.g. the watchdog cut another connection meanwhile
        return "ok"

    assert breaker.call(trial) == "ok"
    assert breaker.state == OPEN
