"""The model repository from the client against a real repository server: list, load, unload, in Python and
from the command line."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.bundles import LinearGaussian
from tests.serving import RunningServer
from vaeserve.client import AsyncClient, Client, InvalidArgumentError, ModelStatus, NotFoundError
from vaeserve.client.cli import main


def add_version(repo: Path, name: str, version: int, bundle: Path) -> Path:
    return Path(shutil.copytree(bundle, repo / name / str(version)))


def versions(statuses: list[ModelStatus]) -> dict[str, str]:
    return {s.version: s.state for s in statuses}


def wait_for_versions(client: Client, name: str, want: dict[str, str], timeout: float = 10.0) -> None:
    """Retired versions leave the list once their requests in flight are done, just after the reply."""
    deadline = time.monotonic() + timeout
    while (seen := versions(client.list_models(name))) != want:
        assert time.monotonic() < deadline, f"versions of {name}: {seen}, expected {want}"
        time.sleep(0.02)


@pytest.fixture
def repo(tmp_path: Path, worse_bundle: Path) -> Path:
    add_version(tmp_path / "models", "lg", 1, worse_bundle)
    return tmp_path / "models"


@pytest.fixture
def server(serve: Callable[..., RunningServer], repo: Path) -> RunningServer:
    return serve(None, model_repository=repo)


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.address, model="lg") as c:
        yield c


def test_list_models_shows_ready_versions(client: Client, repo: Path) -> None:
    (status,) = client.list_models()
    assert status == ModelStatus("lg", "1", "READY", "", str(repo / "lg" / "1"), 0)
    assert client.list_models("lg") == [status] and client.list_models("nope") == []


def test_load_model_swaps_in_a_new_version(client: Client, repo: Path, worse_bundle: Path, lg: LinearGaussian) -> None:
    add_version(repo, "lg", 2, worse_bundle)
    assert versions(client.list_models("lg")) == {"1": "READY"}  # nothing polls: the new version waits for a load
    statuses = client.load_model("lg")
    assert statuses[0].version == "2" and statuses[0].state == "READY"
    assert versions(statuses).get("1", "UNLOADING") == "UNLOADING"  # the default policy is the latest 1
    wait_for_versions(client, "lg", {"2": "READY"})
    assert client.score(lg.sample(3), k=10).served_by.version == "2"
    with Client(client.config.target, model="lg", version="1") as old, pytest.raises(NotFoundError, match="lg:1"):
        old.score(lg.sample(3), k=10)


def test_unload_model_then_load_it_again(client: Client, lg: LinearGaussian) -> None:
    x = lg.sample(3)
    with pytest.raises(NotFoundError, match="lg:7"):
        client.unload_model("lg", "7")
    assert client.unload_model("lg", "1") == []
    assert client.list_models() == []
    with pytest.raises(NotFoundError, match="'lg' is not served here"):
        client.score(x, k=10)
    assert versions(client.load_model("lg")) == {"1": "READY"}
    assert client.unload_model("lg") == []
    assert versions(client.load_model("lg")) == {"1": "READY"}
    assert len(client.score(x, k=10)) == 3


def test_load_errors(client: Client) -> None:
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        client.load_model("nope")
    with pytest.raises(InvalidArgumentError, match="name the model"):
        client.load_model("")


def test_async_twin(server: RunningServer, repo: Path, worse_bundle: Path) -> None:
    add_version(repo, "lg", 2, worse_bundle)

    async def run() -> tuple[list[ModelStatus], list[ModelStatus], list[ModelStatus]]:
        async with AsyncClient(server.address) as aclient:
            before = await aclient.list_models()
            loaded = await aclient.load_model("lg")
            with pytest.raises(NotFoundError):
                await aclient.unload_model("nope")
            return before, loaded, await aclient.unload_model("lg", "2")

    before, loaded, after = asyncio.run(run())
    assert versions(before) == {"1": "READY"} and loaded[0].version == "2" and loaded[0].state == "READY"
    assert versions(after).get("1", "UNLOADING") == "UNLOADING"  # 1 may still be finishing its retirement


def run(server: RunningServer, *args: str) -> int:
    return main(["--target", server.address, *args])


def test_cli_models_load_unload(
    server: RunningServer, repo: Path, worse_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(server, "models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{server.address}: models"
    assert lines[1].split() == ["name", "version", "state", "in", "flight", "reason"]
    assert lines[3].split() == ["lg", "1", "READY", "0"]
    assert run(server, "models", "lg", "--json") == 0
    (status,) = json.loads(capsys.readouterr().out)["models"]
    assert status == {
        "name": "lg",
        "version": "1",
        "state": "READY",
        "reason": "",
        "path": str(repo / "lg" / "1"),
        "in_flight": 0,
    }

    add_version(repo, "lg", 2, worse_bundle)
    assert run(server, "load", "lg") == 0
    out = capsys.readouterr().out
    assert f"{server.address}: loaded lg" in out and out.splitlines()[3].split() == ["lg", "2", "READY", "0"]
    with Client(server.address) as client:
        wait_for_versions(client, "lg", {"2": "READY"})
    assert run(server, "unload", "lg", "--version", "2") == 0
    assert capsys.readouterr().out.strip() == f"{server.address}: unloaded lg:2: no versions of lg left"
    assert run(server, "unload", "lg") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert run(server, "load", "nope") == 1
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "no model 'nope'" in err


def test_cli_load_fails_on_a_broken_version(
    server: RunningServer, repo: Path, worse_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = add_version(repo, "lg", 2, worse_bundle)
    (broken / "manifest.json").write_text("{not json")
    assert run(server, "load", "lg", "--json") == 1  # the table is printed; the exit status says it FAILED
    statuses = {m["version"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert statuses["2"]["state"] == "FAILED" and statuses["2"]["reason"]
    assert statuses["1"]["state"] == "READY"  # what served before keeps serving


def test_cli_model_options(
    server: RunningServer, lg: LinearGaussian, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "x.npy"
    np.save(data, lg.sample(5))
    assert run(server, "info", "--model", "lg", "--model-version", "1") == 0
    assert f"{server.address}: lg:1" in capsys.readouterr().out
    assert run(server, "score", str(data), "--model", "lg", "--k", "20", "--json") == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 5
    assert run(server, "sample", "-n", "2", "--model", "lg", "--out", str(tmp_path / "s.npy")) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 10)
    capsys.readouterr()
    assert run(server, "encode", str(data), "--model", "nope") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    np.save(tmp_path / "z.npy", np.zeros((2, 3)))
    assert run(server, "decode", str(tmp_path / "z.npy"), "--model", "lg", "--model-version", "9") == 1
    assert "lg:9 is not served here" in capsys.readouterr().err
