"""The body of a `--workers` process: a fresh interpreter that serves as one server would."""

from __future__ import annotations

import asyncio
import logging
import sys

from vaeserve.server.app import serve
from vaeserve.server.engine import BundleError, ProviderUnavailable
from vaeserve.server.settings import Settings
from vaeserve.server.worker import Worker

__all__ = ["CANNOT_SERVE", "run_worker"]

CANNOT_SERVE = 2  # the exit code of a server that cannot load its models or bind: restarting will not help
log = logging.getLogger("vaeserve.server.workers")


def run_worker(settings: Settings, worker: Worker) -> None:
    """A worker process's body (a fresh interpreter: logging is set up again here)."""
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(settings, worker))
    except (BundleError, ProviderUnavailable, OSError) as exc:
        log.error("worker %d cannot serve: %s", worker.index, exc)
        sys.exit(CANNOT_SERVE)
    except KeyboardInterrupt:
        sys.exit(130)
