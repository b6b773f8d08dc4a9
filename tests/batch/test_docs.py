"""The bulk-scoring page's session, run as the page shows it (blocks marked `console: batch`), with Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests import doc_examples as de
from tests.batch.conftest import RAY_ENV

pytestmark = pytest.mark.batch

BLOCKS = [b for b in de.blocks() if b.kind == "console" and b.arg == "batch"]


def test_the_bulk_scoring_page_has_a_session() -> None:
    assert any(b.page.name == "bulk-scoring.md" for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_the_commands_print_what_the_docs_show(block: de.Block, tmp_path: Path) -> None:
    env = {**de.environment("", "", Path(sys.executable)), **RAY_ENV}
    de.make_inputs(tmp_path, env)
    live = de.Live("", "", tmp_path, env, {})
    for command, shown in de.console_commands(block.text):
        problem = de.mismatch(de.run_console(live, command), shown)
        assert problem is None, f"{block.where}: $ {command}\n{problem}"
