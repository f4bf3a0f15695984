"""A real etcd cluster on loopback ports, started and stopped by tests and benchmarks.

Members run as child processes of this one, with their data in a directory
the caller owns. Blocking calls (starting, waiting for health, signalling):
from async code, run them in a worker thread.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import attrs

__all__ = ["EtcdCluster", "ServerTls", "free_ports"]

START_TIMEOUT = 30.0


@attrs.frozen
class ServerTls:
    """The members' certificate and key, the CA that signed them, and optionally client certificates."""

    cert: Path
    key: Path
    ca: Path
    client_ca: Path | None = None  # members require client certificates signed by this CA
    client_cert: tuple[Path, Path] | None = None  # (cert, key) the health checks present


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1, started and stopped by the tests."""

    def __init__(self, binary: str, workdir: Path, size: int = 3, *, tls: ServerTls | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.tls = tls
        ports = free_ports(2 * size)
        self.client_ports = ports[:size]
        self.peer_ports = ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.token = f"actorlock-{os.getpid()}-{ports[0]}"

    @property
    def endpoints(self) -> list[str]:
        scheme = "https" if self.tls is not None else "http"
        return [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]

    def _args(self, i: int) -> list[str]:
        initial = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        client = self.endpoints[i]
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        tls = []
        if self.tls is not None:
            tls = [f"--cert-file={self.tls.cert}", f"--key-file={self.tls.key}"]
            if self.tls.client_ca is not None:
                tls += ["--client-cert-auth", f"--trusted-ca-file={self.tls.client_ca}"]
        return [
            self.binary,
            *tls,
            f"--name={self.names[i]}",
            f"--data-dir={self.workdir / self.names[i]}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={self.token}",
            "--initial-cluster-state=new",
            # Fast elections keep the fault tests short; loopback has no jitter to absorb.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-level=error",
        ]

    def start_member(self, i: int) -> None:
        log = (self.workdir / f"{self.names[i]}.log").open("ab")
        with log:
            self.procs[i] = subprocess.Popen(self._args(i), stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy()

    def wait_healthy(self, members: list[int] | None = None) -> None:
        """Block until every member in ``members`` (default all running) serves a linearizable read."""
        wanted = members if members is not None else [i for i, p in enumerate(self.procs) if p is not None]
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(wanted)
        while pending:
            for i in sorted(pending):
                if self._healthy(i):
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                logs = {self.names[i]: self.log_tail(i) for i in pending}
                raise RuntimeError(f"etcd members {sorted(pending)} not healthy: {logs}")
            if pending:
                time.sleep(0.05)

    def _open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            if self.tls.client_ca is not None and self.tls.client_cert is not None:
                context.load_cert_chain(str(self.tls.client_cert[0]), str(self.tls.client_cert[1]))
        return urllib.request.urlopen(request, timeout=timeout, context=context)

    def _healthy(self, i: int) -> bool:
        try:
            with self._open(f"{self.endpoints[i]}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def log_tail(self, i: int) -> str:
        path = self.workdir / f"{self.names[i]}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def status(self, i: int) -> dict[str, object]:
        request = urllib.request.Request(
            f"{self.endpoints[i]}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with self._open(request, timeout=2) as response:
            data = json.loads(response.read())
        assert isinstance(data, dict)
        return data

    def leader(self) -> int:
        """Index of the current leader, by asking a running member."""
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                status = self.status(i)
            except OSError:
                continue
            header = status["header"]
            assert isinstance(header, dict)
            if status.get("leader") == header.get("member_id"):
                return i
        raise RuntimeError("no member says it leads")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.procs[i] = None

    def pause(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self.procs[i] = None
