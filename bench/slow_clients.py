"""`python -m bench.slow_clients PORT SOCKETS SECONDS [header|body]`: a bounded slow-client attack, on loopback.

SOCKETS connections send a request 1 byte a second (the headers, or a 1,000-byte body after
whole headers), reconnecting as soon as they are answered; meanwhile a probe sends GET /livez every
0.5 s. Prints how the probes fared and what the slow clients got. Start the server yourself
(docs/operations.md, "Slow and hostile clients", has the figures and the command lines).
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import threading
import time


def attack(port: int, body: bool, stop: float, answers: dict[str, int], lock: threading.Lock) -> None:
    """One slow client, again and again until stop."""
    while time.monotonic() < stop:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if body:
                    sock.sendall(b"POST /users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 1000\r\n\r\n")
                slow = b"a" * 1000 if body else b"GET /livez HTTP/1.1\r\nX-Slow: " + b"a" * 1000
                for byte in slow:
                    if time.monotonic() > stop:
                        break
                    sock.sendall(bytes([byte]))
                    try:
                        got = sock.recv(200)  # waits up to the 1 s socket timeout: the 1 byte/s pace
                    except TimeoutError:
                        continue
                    key = got.split(b"\r\n")[0].decode() if got else "closed"
                    with lock:
                        answers[key] = answers.get(key, 0) + 1
                    break
        except OSError as exc:
            with lock:
                answers[type(exc).__name__] = answers.get(type(exc).__name__, 0) + 1
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=(__doc__ or "").split("\n\n", 1)[-1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int, help="the server's port on 127.0.0.1")
    p.add_argument("sockets", type=int, help="slow connections held open at once")
    p.add_argument("seconds", type=float, help="how long the attack lasts")
    p.add_argument("part", nargs="?", choices=("header", "body"), default="header",
                   help="what is sent 1 byte a second: the headers (default) or a 1,000-byte body")
    args = p.parse_args(argv)
    port, sockets, seconds, body = args.port, args.sockets, args.seconds, args.part == "body"
    stop = time.monotonic() + seconds
    answers: dict[str, int] = {}
    lock = threading.Lock()
    threads = [threading.Thread(target=attack, args=(port, body, stop, answers, lock), daemon=True)
               for _ in range(sockets)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    latencies, ok, failed = [], 0, 0
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/livez")
            response = conn.getresponse()
            response.read()
            conn.close()
            ok, failed = (ok + 1, failed) if response.status == 200 else (ok, failed + 1)
        except (OSError, http.client.HTTPException):
            failed += 1
        latencies.append(time.monotonic() - started)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
    latencies.sort()
    print(f"{sockets} slow-{'body' if body else 'header'} sockets, {seconds:.0f} s: probes ok={ok} failed={failed} "
          f"median={latencies[len(latencies) // 2]:.2f}s max={latencies[-1]:.2f}s; slow clients got: {answers}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
