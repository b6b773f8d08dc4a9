"""What reaches the user's terminal from Ray: this command's own lines, and Ray's only when asked (--verbose).

Ray's Python side is told so where it is set up: ray.init's logging level and log_to_driver (start-up lines,
the workers' output), the "ray.data" logger and Ray Data's context (execution plans, progress bars). Its
logs still go to the session directory (/tmp/ray/session_latest/logs on the driver's machine).

One line needs more. When Ray Data starts an actor pool, the driver's core worker (C++) logs, at ERROR level
and once per process, "Actor ... has constructor arguments in the object store and max_restarts > 0 ...":
Ray Data hands its actors their context by reference and restarts them when they die, as it should, and
those references live as long as the run (ray-project/ray#57733: a false alarm). A driver's C++ log lines
of level ERROR go to its stderr as well as to its log file, and nothing configures that short of
RAY_BACKEND_LOG_LEVEL, which empties every log file of the instance and announces itself on stderr; the
actors' restarts can only be turned off through map_batches arguments deprecated in Ray 2.60. So while the
pool starts, the driver's stderr is held in a file and then written out without Ray's C++ log lines.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["RAY_CORE_LINE", "ray_data_logs", "ray_init_options", "without_ray_core_lines"]

# Ray's C++ text log format, "[2026-12-06 05:11:53,590 E 32054 32054] core_worker.cc:2465: ...", levels trace to
# error, wherever it starts (a line of someone else's may be unfinished); a fatal line (C) stays, as does the rest.
RAY_CORE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [TDIWE] \d+ \d+\] [^\n]*\n?")


def ray_init_options(verbose: bool) -> dict[str, Any]:
    """ray.init's settings for the driver's terminal: Ray's start-up lines and the workers' output, or errors only."""
    return {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}


@contextmanager
def ray_data_logs(verbose: bool) -> Iterator[None]:
    """Ray Data's log lines on the terminal only when verbose. Quiet, a failed task is reported once, by our
    message, where Ray Data would log its traceback as well."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def without_ray_core_lines(enabled: bool = True) -> Iterator[None]:
    """Holds what the process writes to its stderr (file descriptor 2, the C++ side's too) and writes it out at
    the end, Ray's C++ log lines left out. Hold it only while nothing of ours is drawn: a progress bar would
    stall until the end."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(terminal, 2)
            os.close(terminal)
            held.seek(0)
            with open(2, "wb", closefd=False) as stderr:  # back where it was written
                stderr.write(RAY_CORE_LINE.sub(b"", held.read()))
