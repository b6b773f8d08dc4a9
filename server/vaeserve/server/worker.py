"""A worker's identity, apart from the supervisor (`workers`) so that the server (`app`) can know it is one
without importing the module that starts it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Worker"]


@dataclass(frozen=True)
class Worker:
    """What a worker knows of its place: its number, how many there are, and its supervisor (it drains
    when that one is gone)."""

    index: int
    supervisor_pid: int
    count: int = 1
