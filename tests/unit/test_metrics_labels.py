"""Metric labels stay bounded whatever clients send."""

from __future__ import annotations

from webapp.observability.metrics import Metrics


def sample(metrics: Metrics, method: str, path: str, status: str) -> float | None:
    return metrics.registry.get_sample_value(
        "http_requests_total", {"method": method, "path": path, "status": status}
    )


def test_an_unknown_http_method_shares_one_label_instead_of_minting_a_series():
    metrics = Metrics()
    for invented in ("FOO", "BAR1", "BAR2"):
        metrics.observe_request(invented, "<unmatched>", 405, 0.001)
    assert sample(metrics, "other", "<unmatched>", "405") == 3.0
    assert sample(metrics, "FOO", "<unmatched>", "405") is None


def test_repeated_requests_accumulate_on_the_same_series():
    metrics = Metrics()
    for _ in range(5):
        metrics.observe_request("GET", "/users/<id:user_id>", 200, 0.002)
    assert sample(metrics, "GET", "/users/<id:user_id>", "200") == 5.0
    count = metrics.registry.get_sample_value(
        "http_request_duration_seconds_count", {"method": "GET", "path": "/users/<id:user_id>"}
    )
    assert count == 5.0
