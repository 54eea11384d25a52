"""The test relay itself (tests/tcp_relay.py), against the real Postgres: it forwards, freezes, thaws, closes."""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import psycopg
import pytest

from tests.polling import wait_until
from tests.tcp_relay import TcpRelay, relayed_url, upstream_of

# Postgres answers this 8-byte SSLRequest with one byte, "S" or "N", before any authentication:
# a round trip on a raw socket, so a test can tell "no answer" from "closed" from "reset".
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@pytest.fixture
def relay(database_url: str) -> Iterator[TcpRelay]:
    with TcpRelay(upstream_of(database_url)) as relay:
        yield relay


def raw_connection(relay: TcpRelay) -> socket.socket:
    return socket.create_connection((relay.host, relay.port), timeout=2.0)


def assert_no_answer(sock: socket.socket, seconds: float = 0.3) -> None:
    """Nothing arrives for `seconds`: no byte, no FIN (b""), no RST (ConnectionResetError)."""
    sock.settimeout(seconds)
    with pytest.raises(TimeoutError):
        sock.recv(1)


def backend_state(db: psycopg.Connection[Any], pid: int) -> str | None:
    row = db.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row[0] if row else None


def test_the_relay_forwards_a_postgres_session(database_url: str, relay: TcpRelay) -> None:
    with psycopg.connect(relayed_url(database_url, relay), autocommit=True) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
    assert relay.accepted == 1


def test_a_frozen_relay_answers_nothing_and_closes_nothing_then_delivers_what_it_held_on_thaw(
    database_url: str, relay: TcpRelay,
) -> None:
    with psycopg.connect(relayed_url(database_url, relay), autocommit=True) as conn:
        probe = raw_connection(relay)
        assert wait_until(lambda: relay.open_links() == 2)
        relay.freeze()
        answers: list[Any] = []
        query = threading.Thread(target=lambda: answers.append(conn.execute("SELECT 42").fetchone()), daemon=True)
        query.start()
        probe.sendall(SSL_REQUEST)
        assert_no_answer(probe)
        assert query.is_alive() and answers == []  # the query got no answer either, and no error

        relay.thaw()
        probe.settimeout(2.0)
        assert probe.recv(1) in (b"S", b"N")  # the request held during the freeze was delivered
        query.join(timeout=2.0)
        assert answers == [(42,)]
        probe.close()


def test_a_frozen_relay_stops_reading_so_the_senders_window_fills(relay: TcpRelay) -> None:
    client = raw_connection(relay)
    assert wait_until(lambda: relay.open_links() == 1)
    relay.freeze()
    client.setblocking(False)
    sent, chunk, limit = 0, b"\0" * 65536, 64 * 1024 * 1024
    with pytest.raises(BlockingIOError):
        while sent < limit:  # bounded: loopback buffers hold a few MiB at most
            sent += client.send(chunk)
    assert 0 < sent < limit  # the kernel buffers filled, then the sender blocked
    _, writable, _ = select.select([], [client], [], 0.3)
    assert writable == []  # and it stays blocked: nobody reads (a reading relay would drain it)
    client.close()


def test_a_connection_made_while_frozen_waits_unanswered_and_is_served_after_the_thaw(relay: TcpRelay) -> None:
    relay.freeze()
    client = raw_connection(relay)  # the kernel completes the handshake; nobody accepts
    client.sendall(SSL_REQUEST)
    assert_no_answer(client)
    assert relay.accepted == 0
    relay.thaw()
    client.settimeout(2.0)
    assert client.recv(1) in (b"S", b"N")
    client.close()


def test_a_session_closed_during_the_freeze_ends_on_the_server_only_after_the_thaw(
    database_url: str, relay: TcpRelay, db: psycopg.Connection[Any],
) -> None:
    conn = psycopg.connect(relayed_url(database_url, relay), autocommit=True)
    conn.execute("BEGIN")
    pid = conn.info.backend_pid
    assert backend_state(db, pid) == "idle in transaction"
    relay.freeze()
    conn.close()  # what the app does to a connection it gives up on
    assert not wait_until(lambda: backend_state(db, pid) is None, timeout=0.3)
    assert backend_state(db, pid) == "idle in transaction"  # the server cannot know: the link is silent
    relay.thaw()
    assert wait_until(lambda: backend_state(db, pid) is None), "the backend outlived its closed client"
    assert wait_until(lambda: relay.open_links() == 0)


def test_close_stops_the_thread_and_closes_every_connection(database_url: str) -> None:
    relay = TcpRelay(upstream_of(database_url)).start()
    client = raw_connection(relay)
    assert wait_until(lambda: relay.open_links() == 1)
    relay.freeze()  # closing must work from any state
    relay.close()
    assert not relay.running
    client.settimeout(2.0)
    with suppress(ConnectionResetError):  # a RST, or else a FIN: either way the client knows
        assert client.recv(1) == b""
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((relay.host, relay.port), timeout=1.0)
