"""tritonclient in a venv of its own (it pins protobuf < 7), built once from the pinned requirements."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRITON_VENV = REPO / ".venv-tritonclient"
TRITON_REQUIREMENTS = Path(__file__).with_name("requirements-tritonclient.txt")


def triton_python() -> Path:
    """The venv's python, (re)built when the requirements changed since it was made."""
    python = TRITON_VENV / "bin" / "python"
    stamp = TRITON_VENV / ".installed"
    if not stamp.exists() or stamp.read_text() != TRITON_REQUIREMENTS.read_text():
        venv.create(TRITON_VENV, with_pip=True, clear=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(TRITON_REQUIREMENTS)],
            check=True,
            timeout=600,
        )
        stamp.write_text(TRITON_REQUIREMENTS.read_text())
    return python
