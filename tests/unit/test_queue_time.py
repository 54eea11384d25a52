"""queue_seconds: how long a request waited since its proxy stamped X-Request-Start, in every form proxies send."""

from __future__ import annotations

import pytest

from webapp.web.pipeline import MAX_QUEUE_SECONDS, queue_seconds

NOW = 1_700_000_010.0  # time.time() when the worker starts the request


@pytest.mark.parametrize("header", [
    "t=1700000007.500",  # nginx: t=${msec}, seconds with milliseconds
    "1700000007500",  # Heroku's router: milliseconds since the epoch
    "t=1700000007500",  # the same, with t=
    "t=1700000007500000",  # microseconds (Apache's %t, some load balancers)
    "t=1700000007500000000",  # nanoseconds
    "1700000007.5",  # seconds without t=
], ids=["nginx-seconds", "heroku-ms", "t-ms", "t-us", "t-ns", "bare-seconds"])
def test_every_unit_proxies_send_is_told_apart_by_magnitude(header: str) -> None:
    assert queue_seconds(header, NOW) == pytest.approx(2.5)


def test_a_stamp_in_the_future_is_no_queue_at_all_never_a_negative_one() -> None:
    assert queue_seconds("t=1700000070.000", NOW) == 0.0  # a minute ahead: skew or forgery
    assert queue_seconds("t=99999999999.000", NOW) == 0.0  # far ahead (year 5138, read as seconds)


@pytest.mark.parametrize("header", [
    "", "t=", "abc", "t=abc", "t=-1700000000", "0", "-5", "nan", "t=inf", "1e400", "t=1700000000,5",
    f"t={NOW - MAX_QUEUE_SECONDS - 1:.3f}",  # over a day old: a broken clock, not a queue
    "t=1.5",  # 1970
], ids=["empty", "t-only", "word", "t-word", "negative", "zero", "minus", "nan", "inf", "overflow", "comma",
        "over-a-day", "1970"])
def test_an_absurd_stamp_is_ignored(header: str) -> None:
    assert queue_seconds(header, NOW) is None


def test_a_day_old_stamp_is_still_a_queue() -> None:
    assert queue_seconds(f"t={NOW - MAX_QUEUE_SECONDS + 1:.3f}", NOW) == pytest.approx(MAX_QUEUE_SECONDS - 1)
