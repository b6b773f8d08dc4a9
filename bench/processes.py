"""Servers under test as separate processes: vaeserve-server and the bare echo server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from vaeserve.client import Client, UnavailableError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, **env} if env else None
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)

    def rss_mb(self, peak: bool = False) -> float:
        """Resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
        field = "VmHWM" if peak else "VmRSS"
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"no {field} for pid {self.proc.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process and everything it started (workers)."""
        tick = os.sysconf("SC_CLK_TCK")
        total, pending = 0.0, [self.proc.pid]
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(child) for child in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class VaeServer(Process):
    def __init__(self, bundle: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        script = Path(sys.executable).parent / "vaeserve-server"
        super().__init__(
            [
                str(script),
                "--bundle",
                str(bundle),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                "cpu",
                "--no-log-requests",
                "--log-level",
                "WARNING",
                *flags,
            ],
            env,
        )
        self.address = f"127.0.0.1:{self.port}"
        with Client(self.address, retries=0) as client:
            try:
                client.wait_until_serving(timeout=120)
            except UnavailableError:
                self.stop()
                raise


class EchoServer(Process):
    def __init__(self, reply_bytes: int) -> None:
        self.port = free_port()
        super().__init__([sys.executable, "-m", "bench.echo", str(self.port), str(reply_bytes)])
        self.address = f"127.0.0.1:{self.port}"
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("echo server did not start")
