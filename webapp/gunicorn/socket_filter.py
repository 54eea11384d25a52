"""The socket filter that lets a stop lose no queued connection: new SYNs dropped, the queue kept.

Trap: the kernel completes handshakes by itself and queues them (the listen backlog) until a
worker calls accept(); when the last process closes the socket, every queued connection is
reset, though its client may already have sent a request. No call means "stop listening but
keep the queue", so a classic BPF filter on the *listening* socket drops new SYNs.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import sys
from typing import Any

log = logging.getLogger("webapp.lifecycle")


class _SockFilter(ctypes.Structure):  # struct sock_filter: one classic BPF instruction
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):  # struct sock_fprog: the program SO_ATTACH_FILTER takes
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; Python's socket module does not export it
# Classic BPF, run on each packet reaching the socket with offset 0 at the TCP header:
# "drop it if it is a pure SYN (SYN set, ACK clear), keep everything else".
_DROP_NEW_SYNS = (
    _SockFilter(0x30, 0, 0, 13),  # ldb [13]           the TCP flags byte
    _SockFilter(0x54, 0, 0, 0x12),  # and #0x12        keep only SYN and ACK
    _SockFilter(0x15, 0, 1, 0x02),  # jeq #0x02        SYN without ACK?
    _SockFilter(0x06, 0, 0, 0),  # ret #0              yes: drop
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1    no: keep the whole packet
)


def refuse_new_connections(listener: Any) -> bool:
    """Stop the kernel starting new TCP connections on listener; those already queued stay acceptable.

    Trap: the kernel completes handshakes by itself and queues them (the listen backlog) until a
    worker calls accept(); when the last process closes the socket, every queued connection is
    reset, though its client may already have sent a request. No call means "stop listening but
    keep the queue", so a BPF filter on the *listening* socket drops new SYNs: those clients get
    no answer, retry, and get "connection refused" once we are gone, which is safe to retry.
    Only pure SYNs: the last ACK of a handshake already under way must pass, or its client
    (connected, as far as it knows) would be reset instead. Queued connections are untouched.
    Linux only; elsewhere (or for a unix socket) returns False and the stop is gunicorn's own.
    """
    if not sys.platform.startswith("linux") or listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    program = (_SockFilter * len(_DROP_NEW_SYNS))(*_DROP_NEW_SYNS)
    try:
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(_SockFprog(len(_DROP_NEW_SYNS), program)))
    except OSError as exc:
        log.warning("could not refuse new connections; the backlog may be reset", extra={"error": str(exc)})
        return False
    return True
