"""The fault suite (bench/fault.py) in its short mode, one test per contract.

Real processes only: the suite's own Postgres (initdb + pg_ctl on its own port) and Redis,
a fresh gunicorn with the production config per scenario, real signals, real load.
Each test fails with the scenario's numbers and the clause it broke. One home per scenario: SIGHUP
and SIGTERM under load are proven by test_gunicorn_lifecycle.py, 100 orders on stock 20 by
tests/integration/test_concurrent_orders.py (and through PgBouncer and gunicorn by
test_through_pgbouncer.py), the frozen link by test_database_link_frozen.py; `make fault` runs all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import scenarios
from bench.faultenv import SHORT, FaultEnv, Verdict
from bench.load import Outcome

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultEnv]:
    env = FaultEnv(SHORT, tmp_path_factory.mktemp("fault-logs"))
    yield env
    env.close()


def assert_kept(verdict: Verdict) -> None:
    assert verdict.passed, str(verdict)


def test_postgres_restart_gives_503_with_retry_after_within_deadline_recovers_and_keeps_every_201(
    fault_env: FaultEnv,
) -> None:
    assert_kept(scenarios.postgres_restart_under_load(fault_env))


def test_redis_killed_under_load_gives_no_5xx(fault_env: FaultEnv) -> None:
    assert_kept(scenarios.redis_killed_under_load(fault_env))


def test_killed_worker_is_respawned_without_5xx_and_metrics_still_sum_it(
    fault_env: FaultEnv,
) -> None:
    assert_kept(scenarios.worker_killed_under_load(fault_env))


# The checks themselves must be able to fail: a 503 without Retry-After or JSON is not "retryable".
@pytest.mark.parametrize(
    ("status", "retry_after", "body", "retryable"),
    [
        (503, "1", b'{"error": {"code": "service_unavailable"}}', True),
        (503, None, b'{"error": {"code": "service_unavailable"}}', False),
        (503, "1", b"<html>Service Unavailable</html>", False),
        (500, "1", b'{"error": {"code": "internal_error"}}', False),
    ],
)
def test_only_a_json_503_with_retry_after_counts_as_failing_fast(
    status: int, retry_after: str | None, body: bytes, retryable: bool
) -> None:
    outcome = Outcome(0.0, 0.1, "response", status, retry_after, body)
    assert scenarios._is_retryable_503(outcome) is retryable


def test_metrics_sum_reads_only_the_user_route_200_counter() -> None:
    text = (
        'http_requests_total{method="GET",path="/users/<id:user_id>",status="200"} 7.0\n'
        'http_requests_total{method="GET",path="/users/<id:user_id>",status="404"} 3.0\n'
        'http_requests_total{method="GET",path="/readyz",status="200"} 5.0\n'
    )
    assert scenarios._counted_200(text) == 7
