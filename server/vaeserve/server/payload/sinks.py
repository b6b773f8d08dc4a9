"""Where payload records go: a JSON-lines file rotated by size, or an HTTP endpoint.

A sink is written by one thread only (the payload log's writer), so it holds no locks. With
`--workers`, each worker process writes a file of its own (`payload.w0.jsonl`, ...): no two
processes ever append to, or rotate, the same file.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = ["BATCH_CONTENT_TYPE", "HTTP_TIMEOUT_S", "FileSink", "HttpSink", "Sink", "open_sink", "worker_path"]

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"  # CloudEvents' HTTP binding, batched mode
HTTP_TIMEOUT_S = 10.0


class Sink(Protocol):
    def write(self, lines: list[bytes]) -> None:
        """Writes records (each one JSON document ending in a newline); raises when they were not kept."""

    def close(self) -> None: ...


class FileSink:
    """Appends to `path`; before a record would take it past `rotate_bytes`, the file becomes `path.1`
    (`path.1` becomes `path.2`, ...) and a new one is started, keeping `keep` rotated files."""

    def __init__(self, path: Path, rotate_bytes: int, keep: int) -> None:
        self.path, self.rotate_bytes, self.keep = path, rotate_bytes, keep
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        self.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.keep:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)

    def write(self, lines: list[bytes]) -> None:
        file = self._open()
        for line in lines:
            if self._size and self._size + len(line) > self.rotate_bytes:
                self._rotate()
                file = self._open()
            file.write(line)
            self._size += len(line)
        file.flush()  # a record is readable (and survives a crash of the process) once written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class HttpSink:
    """POSTs each batch of records as one JSON array (CloudEvents' batched content mode)."""

    def __init__(self, url: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.url, self.timeout_s = url, timeout_s

    def write(self, lines: list[bytes]) -> None:
        body = b"[" + b",".join(line.rstrip(b"\n") for line in lines) + b"]"
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": BATCH_CONTENT_TYPE}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:  # raises on 4xx and 5xx
            reply.read()

    def close(self) -> None:
        pass


def worker_path(path: Path, worker: int | None) -> Path:
    """`payload.jsonl` -> `payload.w2.jsonl` for worker 2 (unchanged for a server of one process)."""
    return path if worker is None else path.with_name(f"{path.stem}.w{worker}{path.suffix}")


def open_sink(target: str, *, worker: int | None, rotate_bytes: int, keep: int) -> Sink:
    """`target` is an http(s):// URL or a file path. Nothing is opened here: the writer thread opens it,
    so a file on a hung mount blocks that thread and never the server's start."""
    if target.startswith(("http://", "https://")):
        return HttpSink(target)
    return FileSink(worker_path(Path(target), worker), rotate_bytes, keep)
