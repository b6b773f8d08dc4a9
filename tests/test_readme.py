"""The README documents what users configure and write: every server setting and every manifest field."""

from __future__ import annotations

import re

from tests.conftest import REPO
from vaeserve.api.manifest import (
    Calibration,
    CrossFit,
    Estimate,
    ImageLayout,
    Manifest,
    Preprocessing,
    Standardization,
    TrainingSummary,
)
from vaeserve.server.repository.model_settings import ModelSettings, VersionPolicy
from vaeserve.server.settings import Settings

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        row = f"| `--{name.replace('_', '-')}` | `VAESERVE_{name.upper()}` |"
        assert row in README, f"README's configuration table lacks {name}"


def test_every_model_setting_is_documented() -> None:
    for name in ModelSettings.model_fields:
        assert f"`{name}`" in README, f"README's model repository section lacks model.toml's {name}"
    for name in VersionPolicy.model_fields:
        assert f"{name} = " in README, f"README lacks version_policy.{name}"


def test_every_manifest_field_is_documented() -> None:
    for model in (
        Manifest,
        Preprocessing,
        ImageLayout,
        TrainingSummary,
        Calibration,
        Standardization,
        Estimate,
        CrossFit,
    ):
        for name in model.model_fields:
            assert f"`{name}`" in README or f".{name}`" in README, (
                f"README's bundle format lacks {model.__name__}.{name}"
            )


def test_the_two_set_up_commands_and_ci() -> None:
    assert "make serve" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run must run the README's test command"
    for placeholder in ("RESULTS_", "SETTINGS_TABLE", "_SECTION", "_EXAMPLE"):
        assert placeholder not in README, f"a placeholder was left in the README: {placeholder}"
