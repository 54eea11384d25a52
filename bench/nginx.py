"""deploy/nginx.conf rendered for given instances, and nginx run from it as a foreground child.

    python -m bench.nginx --listen 80 --upstream 10.0.0.11:8000 --upstream 10.0.0.12:8000 --state-dir /var/lib/nginx

prints the config for a real deploy; `Nginx([8001, 8002]).start()` runs it on loopback (as any
user: its own prefix folder, pid file and temp paths, errors to stderr).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from bench.servers import PROJECT_DIR, free_port, stop_process

TEMPLATE = PROJECT_DIR / "deploy" / "nginx.conf"
CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")


def render(*, listen: str, upstreams: list[str], state_dir: str) -> str:
    """The template with its three placeholders filled in; upstreams are host:port."""
    # The parameters the template's comment explains (fail_timeout: why 1 s).
    servers = "\n        ".join(f"server {address} max_fails=1 fail_timeout=1s;" for address in upstreams)
    text = TEMPLATE.read_text()
    for placeholder, value in (("{{LISTEN}}", listen), ("{{UPSTREAMS}}", servers), ("{{STATE_DIR}}", state_dir)):
        if placeholder not in text:
            raise ValueError(f"{TEMPLATE} lost its {placeholder} placeholder")
        text = text.replace(placeholder, value)
    return text


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


class Nginx:
    """nginx on 127.0.0.1:<port> in front of loopback instances, from the rendered deploy/nginx.conf."""

    def __init__(self, upstream_ports: list[int], *, port: int | None = None):
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="webapp-nginx-"))
        # As root, nginx's workers run as an unprivileged user: they must reach the temp paths
        # (nginx creates and chowns those itself), so the folder above them must be traversable.
        self.dir.chmod(0o755)
        upstreams = [f"127.0.0.1:{p}" for p in upstream_ports]
        conf = render(listen=f"127.0.0.1:{self.port}", upstreams=upstreams, state_dir=str(self.dir))
        (self.dir / "nginx.conf").write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        # -p: relative paths under our folder; -e: errors to stderr before the config is read;
        # -g: the pid file ours, and no daemon, so this process is nginx's master.
        return [
            self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", "stderr",
            "-g", f"daemon off; pid {self.dir / 'nginx.pid'};",
        ]

    def start(self, timeout: float = 10.0) -> Self:
        """Start nginx and return once it accepts connections on its port."""
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=open(self.log_path(), "wb"))  # noqa: SIM115
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start:\n{self.error_text()[-2000:]}") from None
                time.sleep(0.05)

    def log_path(self) -> Path:
        return self.dir / "error.log"

    def error_text(self) -> str:
        return self.log_path().read_text(errors="replace") if self.log_path().exists() else ""

    def access_lines(self) -> list[str]:
        path = self.dir / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def stop(self) -> None:
        """SIGQUIT: finish the requests in flight, then exit; SIGKILL if that takes over 10 s."""
        stop_process(self.proc, signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nginx", description="Print deploy/nginx.conf rendered.")
    p.add_argument("--listen", default="80", help="nginx's listen argument (default 80)")
    p.add_argument("--upstream", action="append", required=True, help="an instance's host:port (repeat)")
    p.add_argument("--state-dir", default="/var/lib/nginx", help="where nginx buffers and logs")
    args = p.parse_args(argv)
    sys.stdout.write(render(listen=args.listen, upstreams=args.upstream, state_dir=args.state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
