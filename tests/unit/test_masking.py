"""No password in any output: mask_url and mask_secrets read a URL as libpq does, and then some."""

from __future__ import annotations

import pytest

from webapp.settings import ConfigError, load_config, mask_secrets, mask_url

# Passwords with every character that ends, splits or escapes part of a URL.
PASSWORDS = ["p@ss@w0rd", "p:ss:w0rd", "p/ss/w0rd", "p%ss%25w0rd", "p?ss#w0rd", "p@s:s/w%0?rd"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_mask_url_masks_everything_between_the_user_and_the_last_at(password: str):
    masked = mask_url(f"postgresql://app:{password}@127.0.0.1:5432/shop")
    assert masked == "postgresql://app:***@127.0.0.1:5432/shop"


@pytest.mark.parametrize("password", PASSWORDS)
def test_mask_secrets_masks_a_url_inside_free_text_and_keeps_the_text_around_it(password: str):
    text = f"error: cannot connect to 'postgresql://app:{password}@db:5432/shop': refused"
    assert mask_secrets(text) == "error: cannot connect to 'postgresql://app:***@db:5432/shop': refused"


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://app@db/shop", "postgresql://app@db/shop"),  # no password: nothing to hide
    ("postgresql://db/shop", "postgresql://db/shop"),
    ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:***@/postgres?host=/tmp/pg"),
    ("postgresql://app@db/shop?password=hunter2&sslmode=require",
     "postgresql://app@db/shop?password=***&sslmode=require"),
    ("postgresql://db/shop?sslmode=require&PASSWORD=p%40ss", "postgresql://db/shop?sslmode=require&PASSWORD=***"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://default:p@ss@cache:6380", "rediss://default:***@cache:6380"),
])
def test_mask_url_handles_no_password_the_unix_socket_form_query_passwords_and_redis(url: str, masked: str):
    assert mask_url(url) == masked


@pytest.mark.parametrize(("dsn", "masked"), [
    ("host=db user=app password=hunter2 dbname=shop", "host=db user=app password=*** dbname=shop"),
    ("host=db password = 'p w@s:s/w0rd' dbname=shop", "host=db password = *** dbname=shop"),
    (r"host=db password='it\'s secret' dbname=shop", "host=db password=*** dbname=shop"),
])
def test_key_value_dsns_lose_their_password_quoted_or_not(dsn: str, masked: str):
    assert mask_url(dsn) == masked
    assert mask_secrets(dsn) == masked


def test_a_host_libpq_misread_from_a_password_is_masked_in_its_error_messages():
    # libpq reads `u:p@ss@w0rd@127.0.0.1` as password `p`, host `ss@w0rd@127.0.0.1`, and says so.
    message = "error connecting in 'webapp': failed to resolve host 'ss@w0rd@127.0.0.1': [Errno -2]"
    assert mask_secrets(message) == "error connecting in 'webapp': failed to resolve host '***@127.0.0.1': [Errno -2]"


def test_text_without_an_at_or_a_password_comes_back_as_the_same_object():
    text = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    assert mask_secrets(text) is text


@pytest.mark.parametrize("url", [
    "postgres://u:p@ss@w0rd@127.0.0.1:1/x",  # libpq: host "ss@w0rd@127.0.0.1"
    "postgres://u:p/ss@127.0.0.1:1/x",  # libpq: host "u", port "p"
    "postgres://u:12/34@127.0.0.1:1/x",  # libpq: host "u", port "12", database "34@127.0.0.1:1/x"
    "postgres://u:p?x@y@127.0.0.1/x",  # libpq: password "p?x", host "y@127.0.0.1"
])
def test_a_password_libpq_would_misread_as_the_host_is_refused_without_echoing_it(url: str):
    with pytest.raises(ConfigError) as caught:
        load_config({"DATABASE_URL": url})
    assert set(caught.value.problems) == {"DATABASE_URL"}
    assert "percent-encode" in str(caught.value) and "@ as %40" in str(caught.value)
    assert not {"ss", "w0rd", "34", "p?x"} & set(str(caught.value).replace(":", " ").split())
    assert url.split("@")[-1] not in str(caught.value)


@pytest.mark.parametrize("url", [
    "postgresql://u:p%40ss%2Fw%3A0%25rd@127.0.0.1:5432/x",  # the same characters, percent-encoded
    "postgresql://u:p:ss@127.0.0.1:5432/x",  # a raw ":" is fine: libpq ends the user at the first one
    "postgresql://u:p?ss#w0rd@db/x",
    "postgresql://u:pw@db1:5432,db2:5433/x?target_session_attrs=read-write",
    "postgresql://postgres:@/postgres?host=/tmp/pg",
])
def test_urls_libpq_reads_as_written_are_accepted(url: str):
    assert load_config({"DATABASE_URL": url}).database_url == url
