"""Configuration is read from an explicit mapping, validated all at once, and never shows secrets."""

from __future__ import annotations

import dataclasses

import click
import pytest

from webapp.settings import ConfigError, config_variables, load_config, mask_url

URL = "postgresql://app:s3cret-pw@db.internal:5432/shop"


def test_defaults_fill_everything_but_the_database_url():
    config = load_config({"DATABASE_URL": URL})
    assert config.request_timeout == 10.0
    assert config.request_timeout == 10.0
    assert config.log_level == "info"
    assert config.redis_url is None


def test_missing_url_and_negative_timeout_are_reported_together():
    with pytest.raises(ConfigError) as caught:
        load_config({"REQUEST_TIMEOUT": "-3"})
    message = str(caught.value)
    assert "DATABASE_URL" in message
    assert "REQUEST_TIMEOUT" in message
    assert set(caught.value.problems) == {"DATABASE_URL", "REQUEST_TIMEOUT"}


def test_every_invalid_field_is_named_in_one_error():
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": "mysql://u:pw@h/db", "CACHE_TTL": "http", "LOG_LEVEL": "loud",
                     "DB_POOL_MAX": "0", "REDIS_URL": "http://cache", "HEALTH_TIMEOUT": "5"})
    assert set(caught.value.problems) == {
        "DATABASE_URL", "CACHE_TTL", "LOG_LEVEL", "DB_POOL_MAX", "REDIS_URL", "HEALTH_TIMEOUT",
    }


def test_error_messages_never_contain_the_password():
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": "mysql://app:s3cret-pw@h/db", "CACHE_TTL": "x"})
    assert "s3cret-pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://app:pw@localhost:5432/shop",
        "postgresql://app:pw@localhost/shop",
        "postgresql://postgres:@/postgres?host=/tmp/pgdata",
    ],
)
def test_accepts_the_url_forms_heroku_and_the_embedded_server_hand_out(url):
    assert load_config({"DATABASE_URL": url}).database_url.startswith("postgresql://")


def test_pool_min_above_max_is_rejected():
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": URL, "DB_POOL_MIN": "5", "DB_POOL_MAX": "2"})
    assert "DB_POOL_MIN" in caught.value.problems


def test_config_is_frozen():
    config = load_config({"DATABASE_URL": URL})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.request_timeout = 1  # type: ignore[misc]


def test_repr_masks_database_and_redis_passwords_and_the_metrics_token():
    config = load_config({"DATABASE_URL": URL, "REDIS_URL": "redis://:r3dis-pw@cache:6379/0",
                          "METRICS_TOKEN": "tok-123456"})
    text = repr(config) + str(config)
    for secret in ("s3cret-pw", "r3dis-pw", "tok-123456"):
        assert secret not in text
    assert "db.internal" in text


def test_load_config_reads_only_the_mapping_it_is_given(monkeypatch):
    monkeypatch.setenv("REQUEST_TIMEOUT", "99")
    assert load_config({"DATABASE_URL": URL}).request_timeout == 10.0


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, "postgresql://app:***@db.internal:5432/shop"),
        ("postgresql://app@db/shop", "postgresql://app@db/shop"),
        ("host=db user=app password=hunter2 dbname=shop", "host=db user=app password=*** dbname=shop"),
    ],
)
def test_mask_url_hides_passwords_in_urls_and_keyword_dsns(url, masked):
    assert mask_url(url) == masked



def test_a_url_libpq_cannot_parse_is_a_config_error_that_never_shows_the_password():
    # A raw % in the password: accepted by urlsplit, rejected by libpq with the token in its message.
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": "postgresql://app:hunter2%zz@db:5432/shop"})
    assert set(caught.value.problems) == {"DATABASE_URL"}
    assert "percent-encode" in str(caught.value)
    assert "hunter2" not in str(caught.value) and caught.value.__cause__ is None and caught.value.__context__ is None
    assert load_config({"DATABASE_URL": "postgresql://app:hunter2%25zz@db:5432/shop"})  # encoded: fine


def test_the_error_is_one_line_and_what_the_flask_cli_prints_without_a_traceback():
    with pytest.raises(ConfigError) as caught:
        load_config({"REQUEST_TIMEOUT": "http"})
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid configuration: DATABASE_URL: ")
    assert isinstance(caught.value, click.ClickException)  # click prints "Error: <message>", exit 1


def test_log_format_is_json_unless_console_is_asked_for():
    assert load_config({"DATABASE_URL": URL}).log_format == "json"
    assert load_config({"DATABASE_URL": URL, "LOG_FORMAT": "console"}).log_format == "console"
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": URL, "LOG_FORMAT": "xml"})
    assert set(caught.value.problems) == {"LOG_FORMAT"}


def test_config_variables_names_every_variable_load_config_reads():
    names = config_variables()
    assert names[:2] == ["DATABASE_URL", "LOG_LEVEL"]
    assert {"LOG_FORMAT", "REDIS_URL", "IDEMPOTENCY_RETENTION_HOURS"} <= set(names)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("auto", None), ("AUTO", None), ("true", True), ("1", True), ("false", False), ("off", False),
])
def test_prepared_statements_are_auto_by_default_or_a_boolean(value: str | None, expected: bool | None):
    environ = {"DATABASE_URL": "postgresql://u@h/d"} | ({"DB_PREPARED_STATEMENTS": value} if value else {})
    assert load_config(environ).db_prepared_statements is expected


def test_prepared_statements_refuse_anything_else():
    with pytest.raises(ConfigError, match="DB_PREPARED_STATEMENTS"):
        load_config({"DATABASE_URL": "postgresql://u@h/d", "DB_PREPARED_STATEMENTS": "sometimes"})
