"""A real vaeserve gRPC server on a loopback port, run by its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from vaeserve.server.app import App, create_server
from vaeserve.server.settings import Settings

T = TypeVar("T")


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
