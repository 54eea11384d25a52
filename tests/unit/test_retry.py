"""retry_with_backoff: bounded retries, full-jitter exponential backoff, deadline-aware."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest

from webapp.resilience import Deadline, RetryError, retry_with_backoff


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records every requested sleep and advances the fake clock instead of blocking."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


class Scripted:
    """A fn that raises or returns the given outcomes in order, counting its calls."""

    def __init__(self, outcomes: Iterable[BaseException | str]) -> None:
        self._outcomes = iter(outcomes)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        outcome = next(self._outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def fixed_rand(*values: float) -> Callable[[], float]:
    """A rand() that returns the given values in order."""
    it = iter(values)
    return lambda: next(it)


def test_returns_the_first_success_without_sleeping() -> None:
    sleep = FakeSleep()
    fn = Scripted(["ok"])
    result = retry_with_backoff(fn, attempts=3, base=0.1, max_delay=1.0, retry_on=(ConnectionError,),
                                sleep=sleep)
    assert result == "ok"
    assert fn.calls == 1
    assert sleep.calls == []


def test_succeeds_after_transient_failures_with_the_exact_full_jitter_sleeps() -> None:
    sleep = FakeSleep()
    fn = Scripted([ConnectionError("1"), ConnectionError("2"), ConnectionError("3"), "ok"])
    result = retry_with_backoff(fn, attempts=4, base=0.1, max_delay=10.0, retry_on=(ConnectionError,),
                                sleep=sleep, rand=fixed_rand(0.5, 0.25, 1.0))
    assert result == "ok"
    assert fn.calls == 4
    # delay before retry k = rand() * min(max_delay, base * 2**(k-1)): 0.5*0.1, 0.25*0.2, 1.0*0.4
    assert sleep.calls == pytest.approx([0.05, 0.05, 0.4])


def test_backoff_doubles_each_retry_and_is_capped_at_max_delay() -> None:
    sleep = FakeSleep()
    with pytest.raises(RetryError):
        retry_with_backoff(Scripted([TimeoutError()] * 6), attempts=6, base=1.0, max_delay=5.0,
                           retry_on=(TimeoutError,), sleep=sleep, rand=lambda: 1.0)
    assert sleep.calls == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_non_retryable_exception_propagates_unchanged_after_one_call() -> None:
    sleep = FakeSleep()
    domain_error = ValueError("quantity must be positive")
    fn = Scripted([domain_error, "never reached"])
    with pytest.raises(ValueError) as info:
        retry_with_backoff(fn, attempts=5, base=0.1, max_delay=1.0, retry_on=(ConnectionError,),
                           sleep=sleep)
    assert info.value is domain_error
    assert fn.calls == 1
    assert sleep.calls == []


def test_retry_on_accepts_a_predicate() -> None:
    def is_transient(exc: BaseException) -> bool:
        return isinstance(exc, RuntimeError) and "serialization" in str(exc)

    fn = Scripted([RuntimeError("serialization failure"), RuntimeError("syntax error")])
    with pytest.raises(RuntimeError, match="syntax error"):
        retry_with_backoff(fn, attempts=5, base=0.0, max_delay=0.0, retry_on=is_transient,
                           sleep=FakeSleep())
    assert fn.calls == 2


def test_a_bare_exception_class_as_retry_on_is_a_type_not_a_truthy_predicate() -> None:
    # ConnectionError(exc) would be a truthy instance: called as a predicate it retries everything.
    fn = Scripted([KeyError("not transient"), "never reached"])
    with pytest.raises(KeyError):
        retry_with_backoff(fn, attempts=3, base=0.0, max_delay=0.0,
                           retry_on=ConnectionError, sleep=FakeSleep())  # type: ignore[arg-type]
    assert fn.calls == 1


def test_giving_up_raises_retry_error_with_attempts_message_and_the_last_cause() -> None:
    errors = [ConnectionError("refused 1"), ConnectionError("refused 2"), ConnectionError("refused 3")]
    fn = Scripted(errors)
    with pytest.raises(RetryError) as info:
        retry_with_backoff(fn, attempts=3, base=0.1, max_delay=1.0, retry_on=(ConnectionError,),
                           sleep=FakeSleep(), rand=lambda: 0.5)
    assert str(info.value) == "gave up after 3 attempts: ConnectionError('refused 3')"
    assert info.value.attempts == 3
    assert info.value.last_error is errors[2]
    assert info.value.__cause__ is errors[2]
    assert fn.calls == 3


def test_never_sleeps_past_the_deadline_and_gives_up_early_instead() -> None:
    clock = FakeClock()
    sleep = FakeSleep(clock)
    deadline = Deadline(1.0, clock=clock)
    fn = Scripted([ConnectionError()] * 10)
    with pytest.raises(RetryError) as info:
        retry_with_backoff(fn, attempts=10, base=0.3, max_delay=10.0, deadline=deadline,
                           retry_on=(ConnectionError,), sleep=sleep, rand=lambda: 1.0)
    # Delays 0.3 and 0.6 fit in the 1.0 s budget; the next one (1.2 s) would not, so stop there.
    assert sleep.calls == pytest.approx([0.3, 0.6])
    assert sum(sleep.calls) <= 1.0
    assert info.value.attempts == 3
    assert fn.calls == 3


def test_an_exhausted_deadline_gives_up_without_even_a_zero_sleep() -> None:
    clock = FakeClock()
    sleep = FakeSleep(clock)
    deadline = Deadline(0.5, clock=clock)

    def slow_failure() -> None:
        clock.now += 0.5  # the attempt itself uses up the whole budget
        raise ConnectionError("timed out")

    with pytest.raises(RetryError) as info:
        retry_with_backoff(slow_failure, attempts=5, base=0.1, max_delay=1.0, deadline=deadline,
                           retry_on=(ConnectionError,), sleep=sleep, rand=lambda: 0.0)
    assert info.value.attempts == 1
    assert sleep.calls == []


def test_before_retry_gets_each_failed_attempt_number_and_error_before_the_sleep() -> None:
    events: list[tuple[object, ...]] = []
    errors = [ConnectionError("a"), ConnectionError("b")]
    outcomes: Iterator[Exception | str] = iter([*errors, "ok"])

    def fn() -> str:
        events.append(("call",))
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    result = retry_with_backoff(
        fn, attempts=5, base=1.0, max_delay=10.0, retry_on=(ConnectionError,),
        sleep=lambda s: events.append(("sleep", s)), rand=lambda: 1.0,
        before_retry=lambda n, exc: events.append(("before_retry", n, exc)),
    )
    assert result == "ok"
    assert events == [
        ("call",), ("before_retry", 1, errors[0]), ("sleep", 1.0),
        ("call",), ("before_retry", 2, errors[1]), ("sleep", 2.0),
        ("call",),
    ]


def test_before_retry_is_not_called_after_the_final_attempt() -> None:
    seen: list[int] = []
    with pytest.raises(RetryError):
        retry_with_backoff(Scripted([OSError()] * 3), attempts=3, base=0.0, max_delay=0.0,
                           retry_on=(OSError,), sleep=FakeSleep(),
                           before_retry=lambda n, exc: seen.append(n))
    assert seen == [1, 2]


def test_keyboard_interrupt_is_never_retried_even_if_retry_on_would_match() -> None:
    fn = Scripted([KeyboardInterrupt(), "never reached"])
    with pytest.raises(KeyboardInterrupt):
        retry_with_backoff(fn, attempts=3, base=0.0, max_delay=0.0, retry_on=(BaseException,),
                           sleep=FakeSleep())
    assert fn.calls == 1


def test_fewer_than_one_attempt_is_rejected() -> None:
    with pytest.raises(ValueError):
        retry_with_backoff(lambda: "ok", attempts=0, base=0.1, max_delay=1.0, retry_on=(OSError,))
