"""`vaeserve-server`: parse settings, set up logging, serve until SIGTERM (one process, or a supervisor of workers)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from vaeserve.server.app import serve
from vaeserve.server.engine.bundle import BundleError
from vaeserve.server.engine.runtime import ProviderUnavailable
from vaeserve.server.settings import load_settings
from vaeserve.server.workers import supervise

log = logging.getLogger("vaeserve.server")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except (ValidationError, SettingsError) as exc:
        print(f"vaeserve-server: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.worker_count > 1:
        try:
            return supervise(settings)
        except OSError as exc:  # the port is taken
            log.error("cannot serve: %s", exc)
            return 2
    try:
        asyncio.run(serve(settings))
    except (BundleError, ProviderUnavailable, OSError) as exc:
        log.error("cannot serve: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
