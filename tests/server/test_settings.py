"""Settings precedence: flags over environment over the TOML file over defaults; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from vaeserve.server.settings import Settings, default_bundle, load_settings


def test_defaults_serve_the_bundled_digits_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("VAESERVE_"):
            monkeypatch.delenv(name)
    settings = load_settings([])
    assert settings.bundle == default_bundle() and (settings.bundle / "manifest.json").is_file()
    assert settings.port == 50051 and settings.device == "auto" and settings.batching


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "vaeserve.toml"
    config.write_text('port = 7001\nmax_k = 123\ndefault_seed = 9\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("VAESERVE_CONFIG", str(config))
    monkeypatch.setenv("VAESERVE_MAX_K", "456")
    monkeypatch.setenv("VAESERVE_BATCHING", "false")
    settings = load_settings(["--port", "7002"])
    assert settings.port == 7002  # flag
    assert settings.max_k == 456  # environment over file
    assert settings.default_seed == 9 and settings.log_level == "DEBUG"  # file over defaults
    assert settings.batching is False


def test_config_file_from_a_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("max_batch = 17\n")
    assert load_settings(["--config", str(config)]).max_batch == 17


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "port"),
        (["--device", "tpu"], "invalid choice"),
        (["--tls-cert", "cert.pem"], "tls_cert and tls_key go together"),
        (["--require-client-cert"], "require_client_cert needs"),
        (["--max-k", "0"], "max_k"),
    ],
)
def test_bad_values_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((ValidationError, SystemExit)) as info:
        load_settings(argv)
    text = str(info.value) + capsys.readouterr().err
    assert message in text


def test_unreadable_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    with pytest.raises(SettingsError, match=r"bad\.toml"):
        Settings(config=bad)
