"""The docs say what the code does: every setting and manifest field documented, the README a front door
whose links resolve, and every marked example run against a live server with its output as the page
shows it (tests/doc_examples.py says how blocks are marked and compared)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from tests import doc_examples as de
from tests.conftest import REPO
from tests.serving import RunningServer
from vaeserve.api.manifest import (
    Calibration,
    CrossFit,
    ImageLayout,
    Manifest,
    Preprocessing,
    Standardization,
    TrainingSummary,
)
from vaeserve.server.repository.model_settings import ModelSettings, VersionPolicy
from vaeserve.server.settings import Settings

DOCS = REPO / "docs"
README = (REPO / "README.md").read_text(encoding="utf-8")


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    text = page("configuration.md")
    for name in Settings.model_fields:
        row = f"| `--{name.replace('_', '-')}` | `VAESERVE_{name.upper()}` |"
        assert row in text, f"docs/configuration.md's table lacks {name}"


def test_every_model_setting_is_documented() -> None:
    text = page("repository.md")
    for name in ModelSettings.model_fields:
        assert f"`{name}`" in text, f"docs/repository.md lacks model.toml's {name}"
    for name in VersionPolicy.model_fields:
        assert f"{name} = " in text, f"docs/repository.md lacks version_policy.{name}"


def test_every_manifest_field_is_documented() -> None:
    text = page("bundle-format.md")
    # The summary's estimate type, found from the field (its name is not the contract; its fields are).
    annotation = TrainingSummary.model_fields["test_elbo"].annotation
    estimate = [t for t in (annotation, *get_args(annotation)) if isinstance(t, type) and issubclass(t, BaseModel)]
    assert len(estimate) == 1, f"the training summary's estimate type: {annotation}"
    models = [Manifest, Preprocessing, ImageLayout, TrainingSummary, Calibration, Standardization, CrossFit]
    for model in [*models, *estimate]:
        for name in model.model_fields:
            assert f"`{name}`" in text or f".{name}`" in text, f"docs/bundle-format.md lacks {model.__name__}.{name}"


def test_the_readme_is_a_front_door() -> None:
    assert len(README.splitlines()) <= 200, "the README is a front door: move detail into docs/"
    assert "make serve" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run must run the README's test command"
    assert re.search(r"^make docs$", ci, re.MULTILINE), ".ci/run must build the docs site (strict)"


def _slug(heading: str) -> str:
    """MkDocs' (Python-Markdown toc's) anchor of a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def test_the_readmes_links_resolve() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links, "the README links to the docs"
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = REPO / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README links to {link}: no such heading"


def test_no_placeholder_is_left() -> None:
    for path in de.DOCS:
        text = path.read_text(encoding="utf-8")
        for placeholder in ("RESULTS_", "SETTINGS_TABLE", "_SECTION", "_EXAMPLE", "TODO"):
            assert placeholder not in text, f"a placeholder was left in {path}: {placeholder}"


BLOCKS = list(de.blocks())
EXAMPLES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").glob("*.py"))


def test_every_example_is_shown_as_it_is() -> None:
    shown = {b.arg for b in BLOCKS if b.kind == "example"}
    assert set(EXAMPLES) - {"examples/make_inputs.py"} <= shown, "every example in examples/ is shown by a page"
    for block in BLOCKS:
        if block.kind == "example":
            assert block.text.strip() == (REPO / block.arg).read_text().strip(), (
                f"{block.where}: the page's copy of {block.arg} differs from the file"
            )
        if block.kind == "output":
            assert block.arg in shown, f"{block.where}: output of {block.arg}, which no page shows"


def test_every_console_session_is_marked() -> None:
    """A console block shows commands and their output: it is run, or says why not."""
    for path in de.DOCS:
        lines = path.read_text(encoding="utf-8").split("\n")
        fences = [i for i, line in enumerate(lines) if line.startswith("```")]
        for opening in fences[::2]:
            if lines[opening].strip() == "```console":
                assert opening > 0 and lines[opening - 1].startswith("<!-- "), (
                    f"{path.relative_to(REPO)}:{opening + 1}: a console block needs a marker (tests/doc_examples.py)"
                )


def test_each_skipped_block_says_why() -> None:
    for block in BLOCKS:
        if block.kind == "not run":
            assert len(block.arg) > 10, f"{block.where}: say why the block is not run"


def test_the_comparison_catches_drift() -> None:
    shown = "flagged 2 of 200\nlog p(x) -25.08 ± 0.020, p-value 0.470\nseconds 0.251\nwrote scores.csv"
    assert de.mismatch(shown, shown) is None
    assert de.mismatch(shown.replace("-25.08", "-25.09"), shown) is None, "two units in the last digit pass"
    assert de.mismatch(shown.replace("0.470", "0.978"), shown), "a p-value that moved is caught"
    assert de.mismatch(shown.replace("2 of", "3 of"), shown), "counts are exact"
    assert de.mismatch(shown.replace("0.251", "9.999"), shown) is None, "timings are masked"
    assert de.mismatch(shown.replace("scores.csv", "odd.csv"), shown), "words are exact"
    assert de.mismatch(shown + "\nextra", shown), "a line more is caught"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[de.Live]:
    servers = {name: RunningServer(de.live_settings(name)) for name in {"digits", *de.EXAMPLE_BUNDLES.values()}}
    try:
        digits = servers["digits"]
        grpc, http = digits.address, f"127.0.0.1:{digits.app.http_port}"
        env = de.environment(grpc, http)
        cwd = tmp_path_factory.mktemp("docs")
        de.make_inputs(cwd, env)
        yield de.Live(grpc, http, cwd, env, {name: s.address for name, s in servers.items()})
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "output"], ids=lambda b: b.where)
def test_the_example_prints_what_the_docs_show(live: de.Live, block: de.Block) -> None:
    problem = de.mismatch(de.run_example(live, block.arg), block.text)
    assert problem is None, f"{block.where}: {block.arg} {problem}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "console" and not b.arg], ids=lambda b: b.where)
def test_the_commands_print_what_the_docs_show(live: de.Live, block: de.Block) -> None:
    """A console block's commands, in order (a later one may read what an earlier one wrote)."""
    for command, shown in de.console_commands(block.text):
        if command.startswith("curl") and shutil.which("curl") is None:
            pytest.skip("curl is not installed here; examples/http_infer.py makes the same calls")
        problem = de.mismatch(de.run_console(live, command), shown)
        assert problem is None, f"{block.where}: $ {command}\n{problem}"
