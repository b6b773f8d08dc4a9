"""Real vaeserve servers on loopback ports: in this process (its own event loop on a thread), or the
`vaeserve-server` console script as a child process."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from vaeserve.client import Client, UnavailableError
from vaeserve.server.app import App, create_server
from vaeserve.server.settings import Settings

T = TypeVar("T")
SCRIPT = Path(sys.executable).parent / "vaeserve-server"


def server_settings(bundle: Path | None, **overrides: Any) -> Settings:
    """Test settings serving `bundle` (None: give `model_repository` in overrides)."""
    values: dict[str, Any] = {
        "bundle": bundle,
        "host": "127.0.0.1",
        "port": 0,
        "device": "cpu",
        "replica_id": "test-replica",
        "log_requests": False,
        **overrides,
    }
    return Settings(**values)


class RunningServer:
    def __init__(self, settings: Settings, *, load: bool = True) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.app: App = self.run(create_server(settings))
        if load:
            try:
                self.run(self.app.start(settings.repository_poll_s))
            except BaseException:
                self.stop()
                raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, grace: float | None = 0.0) -> None:
        self.run(self.app.stop(grace))
        self.close_loop()

    def close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class ServerProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(SCRIPT), "--host", "127.0.0.1", "--port", "0", "--device", "cpu", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._port: int | None = None
        self._seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                self._port = int(match.group(1))
                self._seen.set()
        self._seen.set()

    @property
    def address(self) -> str:
        assert self._seen.wait(30) and self._port, "".join(self.lines)
        return f"127.0.0.1:{self._port}"

    def wait_serving(self, timeout: float = 60.0) -> None:
        with Client(self.address, retries=0) as client:
            try:
                client.wait_until_serving(timeout)
            except UnavailableError as exc:
                raise AssertionError("".join(self.lines)) from exc

    def stop(self) -> None:
        """SIGTERM (a supervisor passes it to its workers), SIGKILL if it has not exited 15 s later."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
