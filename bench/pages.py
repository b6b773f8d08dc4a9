"""The generated benchmark pages (docs/benchmarks/): each starts with the machine, the date and the command
that wrote it, so a figure is never read without where it came from."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def processor() -> str:
    """platform.processor(), or where it says no more than the architecture (most Linux systems), the model
    name in /proc/cpuinfo."""
    name = platform.processor()
    if not name or name == platform.machine():
        with contextlib.suppress(OSError):
            lines = Path("/proc/cpuinfo").read_text().splitlines()
            name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    return name or platform.machine() or "unknown processor"


def _memory_gib() -> str:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        return f", {int(line.split()[1]) / 2**20:.1f} GiB"
    return ""


def _versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for module in ("onnxruntime", "torch", "ray"):
        if module in sys.modules:
            found.append(f"{module} {getattr(sys.modules[module], '__version__', '?')}")
    return ", ".join(found)


def command_line(module: str, argv: Sequence[str]) -> str:
    return shlex.join(["python", "-m", module, *argv])


def header(title: str, command: str) -> list[str]:
    """The page's title and where its figures came from (call it after the run, so versions are known)."""
    return [
        f"# {title}",
        "",
        f"- machine: {processor()}, {os.cpu_count()} cores{_memory_gib()} ({platform.system()} {platform.release()})",
        f"- software: {_versions()}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
    ]


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> list[str]:
    """A markdown table; `align` has one letter per column, r for right-aligned (numbers)."""
    rule = ["---:" if (align[i : i + 1] == "r") else "---" for i in range(len(columns))]
    return [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows),
    ]


def goal(text: str, value: float, target: float, unit: str, at_most: bool = False) -> tuple[str, str, str]:
    """A goal's row on a page: what it asks, this run's figure, and whether it is met."""
    met = value <= target if at_most else value >= target
    return text, f"{value:.2f} {unit}", "met" if met else "**not met**"


def write(path: Path | None, lines: Sequence[str]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
        print(f"wrote {path}")
