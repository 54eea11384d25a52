"""The release before, run against the schema this release brings, under load, through a whole release.

Which release: RELEASE_BEFORE=<rev> when set; else the parent of the newest commit that changed sql/
(`git log -1 --format=%H -- sql/`, then its `^`): the code that was serving when that schema change
was released. It is unpacked with `git archive` into a temporary folder (removed whatever happens)
and run as a platform runs it (bench/release_flow.py): its own `webapp migrate` on an empty database,
its own Procfile `web:` line (real gunicorn, its own webapp package first on PYTHONPATH), mixed load
(80 % GET /users/<id>, 20 % POST /orders with fresh Idempotency-Keys, a new connection per request);
then this release's release phase while it serves, this release's web process (preboot: both serve),
and the old one's SIGTERM and drain. Without the git history this test fails; it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.release_flow import ReleaseRun, ReleaseTiming, release_under_load
from bench.releases import ReleaseHistoryError, materialised, previous_release
from tests.conftest import scratch_database

pytestmark = pytest.mark.slow

TIMING = ReleaseTiming(clients=3, before=1.5, after_release_phase=2.0, preboot=1.5, after=1.5, users=50)


@pytest.fixture(scope="module")
def release(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReleaseRun, str]]:
    """The whole release, run once: what it saw, and the folder the release before ran from."""
    try:
        rev = previous_release()
    except ReleaseHistoryError as exc:
        pytest.fail(f"the release-before test cannot find the release before: {exc}")
    with scratch_database(server_url, "release_before", migrated=False) as url, materialised(rev) as tree:
        yield release_under_load(url, tree, TIMING, tmp_path_factory.mktemp("release-logs")), str(tree)


def test_the_release_before_runs_its_own_code_from_git(release: tuple[ReleaseRun, str]) -> None:
    run, tree = release
    assert run.old_package == f"{tree}/webapp/__init__.py"
    assert not run.new_package.startswith(tree)


def test_this_releases_release_phase_migrates_the_database_the_release_before_serves(
    release: tuple[ReleaseRun, str],
) -> None:
    run, _ = release
    assert run.release_phase_rc == 0, run.release_phase_output


def test_the_release_before_answers_every_request_before_during_and_after_the_release_phase(
    release: tuple[ReleaseRun, str],
) -> None:
    run, _ = release
    assert {"old/before_release_phase", "old/after_release_phase"} <= run.tally().keys(), run.report()
    assert not run.failed("old"), run.report()


def test_this_release_answers_every_request_beside_the_release_before_and_after_it(
    release: tuple[ReleaseRun, str],
) -> None:
    run, _ = release
    assert {"new/preboot", "new/after"} <= run.tally().keys(), run.report()
    assert not run.failed("new"), run.report()


def test_the_release_before_drains_and_exits_0_on_sigterm(release: tuple[ReleaseRun, str]) -> None:
    assert release[0].old_exit_code == 0


def test_every_201_is_stored_and_only_those(release: tuple[ReleaseRun, str]) -> None:
    run, _ = release
    assert run.created_ids, "no order was placed: the load never ran"
    assert run.stored_ids == run.created_ids


def test_an_idempotency_key_used_on_the_release_before_is_replayed_by_this_release(
    release: tuple[ReleaseRun, str],
) -> None:
    run, _ = release
    status, order_id = run.key_before
    assert status == 201
    assert run.key_after == (201, order_id, "true")


def test_without_the_git_history_the_release_before_is_an_error_saying_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ReleaseHistoryError, match="git history"):
        previous_release(tmp_path, environ={})
