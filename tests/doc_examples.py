"""The docs' examples, run: the blocks a page marks are executed against a live server and their output
compared with what the page shows.

Markers are HTML comments (invisible on the page), each before a fenced block:

- `<!-- example: examples/NAME.py -->` before a ```python block: the block must equal the file.
- `<!-- output: examples/NAME.py -->` before a ```text block: what running the file prints.
- `<!-- console -->` before a ```console block: each `$ command` line (a trailing `\\` or an open quote continues it) is
  run with bash in a scratch folder, and the lines up to the next `$` are what it prints.
- `<!-- console: batch -->`: the same, run by `make test-batch` (it needs Ray).
- `<!-- not run: REASON -->`: a block left out on purpose (training, Kubernetes, Docker, benchmarks).

Output is compared line by line with runs of spaces collapsed: words exactly; integers exactly; other
numbers to `RTOL` relative or two units in the last printed digit, whichever is larger (float32 rounding
differs between processors); numbers on lines that report time or speed, and a replica's host name, are
masked. The live server's addresses are written as the docs' `localhost:50051` and `localhost:8000`.

`python -m tests.doc_examples --update` rewrites every marked output from a fresh run (review the diff).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.serving import server_settings
from tests.v2.triton_venv import triton_python
from vaeserve.server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RTOL = 0.01
DOC_GRPC = "localhost:50051"
DOC_HTTP = "localhost:8000"
TRITON_EXAMPLES = {"examples/triton_infer.py"}
# Examples about another bundled model run against a server of that bundle (`make serve ARGS="--bundle ..."`).
EXAMPLE_BUNDLES = {"examples/importance_sampling.py": "mnist5k"}

_MARKER = re.compile(r"^<!-- (example|output|console|not run)(?::\s*(.*?))?\s*-->$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|\bnan\b|\binf\b")
# Lines whose numbers are timings, rates or a host's name: they change from run to run.
_MASKED = re.compile(r"seconds|inputs/s|rows/s|requests/s|\bms\b|took|replica|elapsed", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # first line of the fence, 1-based
    kind: str  # example | output | console | not run
    arg: str
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(pages: list[Path] = DOCS) -> Iterator[Block]:
    """Every marked fenced block of the pages, in order."""
    for page in pages:
        lines = page.read_text(encoding="utf-8").split("\n")
        i = 0
        while i < len(lines):
            marker = _MARKER.match(lines[i].strip())
            i += 1
            if not marker:
                continue
            while i < len(lines) and not lines[i].startswith("```"):
                if lines[i].strip():
                    raise ValueError(f"{page}:{i + 1}: a marker must stand right before its fenced block")
                i += 1
            start = i
            end = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("```"))
            yield Block(
                page, start + 1, marker[1], marker[2] or "", lines[start][3:].strip(), "\n".join(lines[start + 1 : end])
            )
            i = end + 1


@dataclass(frozen=True)
class Live:
    """Where the examples run: the server's addresses, a scratch folder and the environment."""

    grpc: str
    http: str
    cwd: Path
    env: Mapping[str, str]
    others: Mapping[str, str]  # bundle name -> the address of a server of that bundle alone

    def to_docs(self, text: str) -> str:
        for live, doc in ((self.grpc, DOC_GRPC), (self.http, DOC_HTTP)):
            text = text.replace(live, doc) if live else text
        return text

    def from_docs(self, text: str) -> str:
        for live, doc in ((self.grpc, DOC_GRPC), (self.http, DOC_HTTP)):
            text = text.replace(doc, live) if live else text
        return text


def environment(grpc: str, http: str, python: Path = Path(sys.executable)) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "VAESERVE_TARGET": grpc,
        "VAESERVE_HTTP": http,
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as on a terminal
        "COLUMNS": "100",
    }


def run_example(live: Live, path: str) -> str:
    # tritonclient pins protobuf < 7, so its example runs in a venv of its own.
    python = str(triton_python()) if path in TRITON_EXAMPLES else sys.executable
    env = dict(live.env)
    if path in EXAMPLE_BUNDLES:
        env["VAESERVE_TARGET"] = live.others[EXAMPLE_BUNDLES[path]]
    done = subprocess.run(
        [python, str(REPO / path)],
        cwd=live.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(f"{path} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return live.to_docs(done.stdout)


def _open_quote(command: str) -> bool:
    """Whether a shell command ends inside a quoted string (it goes on on the next line, as in bash)."""
    quote = ""
    escaped = False
    for char in command:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
    return bool(quote)


def console_commands(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, list[str]]] = []
    lines = iter(text.split("\n"))
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") or _open_quote(command):
                command = command + "\n" + next(lines)
            pairs.append((command, []))
        elif pairs:
            pairs[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"console output before any command: {line!r}")
    return [(command, "\n".join(out)) for command, out in pairs]


def run_console(live: Live, command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", live.from_docs(command)],
        cwd=live.cwd,
        env=dict(live.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    return live.to_docs(done.stdout).rstrip("\n")


def _decimals(token: str) -> int:
    mantissa = re.split(r"[eE]", token)[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def _close(got: str, want: str) -> bool:
    if got == want:
        return True
    if "." not in want + got and "e" not in (want + got).lower() and want not in ("nan", "inf"):
        return False  # integers (counts, shapes, exit statuses) are exact
    try:
        g, w = float(got.replace(",", "")), float(want.replace(",", ""))
    except ValueError:
        return False
    if math.isnan(w) or math.isnan(g):
        return math.isnan(w) and math.isnan(g)
    exponent = int(re.split(r"[eE]", want)[1]) if re.search(r"[eE]", want) else 0
    unit = 10.0 ** (exponent - _decimals(want))
    return abs(g - w) <= max(RTOL * abs(w), 2 * unit)


def mismatch(got: str, want: str) -> str | None:
    """Why `got` is not what the docs show, or None."""
    got_lines = [" ".join(line.split()) for line in got.strip("\n").split("\n")]
    want_lines = [" ".join(line.split()) for line in want.strip("\n").split("\n")]
    if len(got_lines) != len(want_lines):
        return f"{len(got_lines)} lines printed, the docs show {len(want_lines)}:\n{got}"
    for n, (g, w) in enumerate(zip(got_lines, want_lines, strict=True), 1):
        if _NUMBER.sub("#", g) != _NUMBER.sub("#", w):
            return f"line {n}: printed\n  {g}\nthe docs show\n  {w}"
        if _MASKED.search(w):
            continue
        for got_n, want_n in zip(_NUMBER.findall(g), _NUMBER.findall(w), strict=True):
            if not _close(got_n, want_n):
                return f"line {n}: {got_n} where the docs show {want_n} (rtol {RTOL}):\n  {g}\n  {w}"
    return None


def live_settings(bundle: str = "digits") -> Settings:
    """A server the docs' examples talk to: `make serve` (the bundled digits model), with HTTP on."""
    return server_settings(REPO / "models" / bundle, http_port=0)


def make_inputs(cwd: Path, env: Mapping[str, str]) -> None:
    """The docs' input files, made by the documented command, in a folder that sees the repository's
    examples and bundled models where the docs' commands name them."""
    for name in ("examples", "models"):
        (cwd / name).symlink_to(REPO / name, target_is_directory=True)
    subprocess.run([sys.executable, str(REPO / "examples" / "make_inputs.py")], cwd=cwd, env=dict(env), check=True)


def update(live: Live, pages: list[Path] = DOCS, console_kind: str = "") -> int:
    """Rewrites every marked output and console block from a fresh run; returns how many changed."""
    changed = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        new = text
        for block in blocks([page]):
            if block.kind == "output" and not console_kind:
                got = run_example(live, block.arg)
            elif block.kind == "console" and block.arg == console_kind:
                got = "\n".join(
                    "\n".join(filter(None, [f"$ {command}", run_console(live, command)]))
                    for command, _ in console_commands(block.text)
                )
            else:
                continue
            if got.strip("\n") != block.text.strip("\n"):
                old_fence = f"```{block.lang}\n{block.text}\n```" if block.text else f"```{block.lang}\n```"
                new = new.replace(old_fence, f"```{block.lang}\n{got.strip(chr(10))}\n```", 1)
                changed += 1
        if new != text:
            page.write_text(new, encoding="utf-8")
    return changed


def main() -> None:
    import tempfile

    from tests.serving import RunningServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the docs' marked outputs from a fresh run")
    parser.add_argument("--batch", action="store_true", help="the `console: batch` blocks (run with .venv-batch)")
    args = parser.parse_args()
    if not args.update:
        parser.error("nothing to do: pass --update (the checks run under pytest)")
    servers = {name: RunningServer(live_settings(name)) for name in {"digits", *EXAMPLE_BUNDLES.values()}}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            server = servers["digits"]
            grpc, http = server.address, f"127.0.0.1:{server.app.http_port}"
            env = environment(grpc, http)
            live = Live(grpc, http, Path(scratch), env, {name: s.address for name, s in servers.items()})
            make_inputs(live.cwd, env)
            print(f"{update(live, console_kind='batch' if args.batch else '')} blocks rewritten")
    finally:
        for each in servers.values():
            each.stop()


if __name__ == "__main__":
    main()
