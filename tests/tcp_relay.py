"""A TCP relay a test controls: forward loopback connections to Postgres, then freeze and thaw the link.

    with TcpRelay(("127.0.0.1", 5432)) as relay:
        url = relayed_url(database_url, relay)   # the same database, through the relay
        relay.freeze()   # from now on nothing moves, in either direction; no RST, no FIN
        relay.thaw()     # everything moves again, starting with what was held

One thread (a selector loop) serves every connection; close() stops it and closes every socket.
"""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# A Unix socket path (an embedded Postgres), or (host, port).
Address = str | tuple[str, int]

# What the relay itself holds per direction before it stops reading from the sender: small, so
# a slow receiver pushes back on the sender through TCP, as a real network path does.
_BUFFER_BYTES = 64 * 1024
# How long one upstream connect may take: Postgres is local, so this only bounds a broken setup.
_CONNECT_TIMEOUT = 2.0


@dataclass
class _Pipe:
    """One direction of one connection: bytes read from src, not yet written to dst."""

    src: socket.socket
    dst: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    src_closed: bool = False


@dataclass
class _Link:
    """A client connection and its upstream connection: two pipes."""

    up: _Pipe
    down: _Pipe

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        return self.up.src, self.up.dst


class TcpRelay:
    """Forwards every connection made to 127.0.0.1:<port> to `upstream`, until frozen or closed.

    Freezing stops *reading* from every socket (and accepting new connections), rather than
    reading and discarding or reading and holding in the relay. Not reading is what a frozen VM,
    a SIGSTOPped Postgres or a PgBouncer PAUSE looks like from the client: the bytes it sends sit
    in kernel buffers, the TCP receive window fills, and then its own send() blocks too; nothing
    ever comes back and the connection never closes. A relay that kept reading would instead
    accept unlimited data from the client, a behaviour no frozen peer has. New connections still
    complete their TCP handshake (the kernel queues them in the listen backlog, as for a stopped
    Postgres; a frozen VM would not even answer the SYN), but their startup gets no answer.

    Thawing resumes reading: everything held in the kernels' buffers (and the few bytes the relay
    had read but not yet written) is delivered, in order. That is what a resumed VM does, TCP being
    reliable; dropping held bytes while keeping the connection open is something no real link can
    do. It is also the harder case for the application: a COMMIT sent just before the freeze still
    reaches Postgres after the thaw, whether or not the client was told 504 in between.
    """

    def __init__(self, upstream: Address, *, host: str = "127.0.0.1"):
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.host, self.port = host, int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        # Wakes the loop out of select() when the test freezes, thaws or closes.
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)
        self._selector.register(self._wake_recv, selectors.EVENT_READ)
        # Held by the loop while it does I/O, and by freeze(): once freeze() returns, nothing moves.
        self._lock = threading.Lock()
        self._frozen = False
        self._closing = False
        self._links: list[_Link] = []
        self.accepted = 0  # connections relayed since start, for tests of the relay itself
        self._thread = threading.Thread(target=self._loop, name=f"tcp-relay-{self.port}", daemon=True)

    # --- what a test calls -----------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        return self

    def freeze(self) -> None:
        """Stop moving bytes both ways and stop accepting; returns once the loop has stopped."""
        with self._lock:
            self._frozen = True
        self._wake()

    def thaw(self) -> None:
        """Move bytes again, beginning with everything held while frozen."""
        with self._lock:
            self._frozen = False
        self._wake()

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def running(self) -> bool:
        """Whether the relay's thread is alive (False once close() returned)."""
        return self._thread.is_alive()

    def open_links(self) -> int:
        """Connections currently relayed (each a client socket and an upstream socket)."""
        with self._lock:
            return len(self._links)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, close every socket; the thread is gone when this returns."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the relay's thread did not stop")
        for link in self._links:
            self._close_link(link)
        self._links.clear()
        self._selector.close()
        for sock in (self._listener, self._wake_recv, self._wake_send):
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the loop --------------------------------------------------------------------------

    def _wake(self) -> None:
        with suppress(BlockingIOError):  # already full of wake-ups: the loop wakes anyway
            self._wake_send.send(b"x")

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                self._register_interest()
            # Outside the lock: freeze() and thaw() must not wait for select() to time out.
            events = self._selector.select(timeout=1.0)
            with self._lock:
                if self._closing:
                    return
                for key, mask in events:
                    if key.fileobj is self._wake_recv:
                        self._drain_wakeups()
                    elif not self._frozen:  # a freeze between select() and here moves nothing
                        self._handle(key.fileobj, mask)  # type: ignore[arg-type]

    def _drain_wakeups(self) -> None:
        with suppress(BlockingIOError):
            while self._wake_recv.recv(4096):
                pass

    def _register_interest(self) -> None:
        """(Re)register every socket for what it may do now: nothing at all while frozen."""
        wanted: dict[socket.socket, int] = {}
        if not self._frozen:
            wanted[self._listener] = selectors.EVENT_READ
            for link in self._links:
                for pipe in (link.up, link.down):
                    if not pipe.src_closed and len(pipe.pending) < _BUFFER_BYTES:
                        wanted[pipe.src] = wanted.get(pipe.src, 0) | selectors.EVENT_READ
                    if pipe.pending:
                        wanted[pipe.dst] = wanted.get(pipe.dst, 0) | selectors.EVENT_WRITE
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            if sock is self._wake_recv:
                continue
            if sock not in wanted:
                self._selector.unregister(sock)
            elif key.events != wanted[sock]:
                self._selector.modify(sock, wanted.pop(sock))
            else:
                wanted.pop(sock)
        for sock, events in wanted.items():
            self._selector.register(sock, events)

    def _handle(self, sock: socket.socket, mask: int) -> None:
        if sock is self._listener:
            self._accept()
            return
        link = self._link_of(sock)
        if link is None:
            return  # closed earlier in this round
        try:
            for pipe in (link.up, link.down):
                if mask & selectors.EVENT_READ and pipe.src is sock:
                    self._read(pipe)
                if mask & selectors.EVENT_WRITE and pipe.dst is sock:
                    self._write(pipe)
        except OSError:  # a reset on either side: the other side sees its connection close
            self._drop(link)
            return
        if any(p.src_closed and not p.pending for p in (link.up, link.down)):
            # One side said goodbye and everything it sent is delivered: close both (Postgres's
            # protocol has no half-closed connections; its backend ends and rolls back).
            self._drop(link)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = self._connect_upstream()
        except OSError:
            client.close()  # the client sees its connection close, as with Postgres down
            return
        for sock in (client, upstream):
            sock.setblocking(False)
        self._links.append(_Link(up=_Pipe(client, upstream), down=_Pipe(upstream, client)))
        self.accepted += 1

    def _connect_upstream(self) -> socket.socket:
        # A blocking connect inside the loop: Postgres is on this machine, so it takes microseconds.
        if isinstance(self.upstream, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_CONNECT_TIMEOUT)
            try:
                sock.connect(self.upstream)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT)

    @staticmethod
    def _read(pipe: _Pipe) -> None:
        try:
            data = pipe.src.recv(_BUFFER_BYTES - len(pipe.pending))
        except BlockingIOError:
            return
        if data:
            pipe.pending += data
        else:
            pipe.src_closed = True

    @staticmethod
    def _write(pipe: _Pipe) -> None:
        try:
            sent = pipe.dst.send(pipe.pending)
        except BlockingIOError:
            return
        del pipe.pending[:sent]

    def _link_of(self, sock: socket.socket) -> _Link | None:
        for link in self._links:
            if sock in link.sockets():
                return link
        return None

    def _drop(self, link: _Link) -> None:
        for sock in link.sockets():
            with suppress(KeyError):  # not registered: it had nothing to do this round
                self._selector.unregister(sock)
        self._close_link(link)
        self._links.remove(link)

    @staticmethod
    def _close_link(link: _Link) -> None:
        for sock in link.sockets():
            sock.close()


def relayed_url(database_url: str, relay: TcpRelay) -> str:
    """database_url with its host and port replaced by the relay's (a Unix-socket host is dropped)."""
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{relay.host}:{relay.port}" if userinfo else f"{relay.host}:{relay.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port", "hostaddr")]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def upstream_of(database_url: str) -> Address:
    """Where database_url's Postgres listens: (host, port), or its Unix socket path."""
    parts = urlsplit(database_url)
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return (host, port)
