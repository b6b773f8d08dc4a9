"""Shared fixtures: closed-form bundles, the bundled models, and real servers on loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.bundles import Encoder, LinearGaussian, write_bundle
from tests.serving import RunningServer, ServerProcess, server_settings

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"


@pytest.fixture(scope="session")
def lg() -> LinearGaussian:
    """Closed-form model: 10 dimensions, 3 latents, small noise (so the prior is a poor proposal)."""
    return LinearGaussian.random(dim=10, latent=3, s2=0.1, seed=0)


@pytest.fixture(scope="session")
def exact_bundle(lg: LinearGaussian, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("exact"), lg, Encoder()).path


@pytest.fixture(scope="session")
def worse_bundle(lg: LinearGaussian, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """q(z|x) with its mean shrunk by 0.7 and its variance doubled: a known KL gap to p(z|x)."""
    return write_bundle(tmp_path_factory.mktemp("worse"), lg, Encoder(shrink=0.7, var_scale=2.0)).path


@pytest.fixture(scope="session")
def digits_bundle() -> Path:
    return MODELS / "digits"


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Starts real servers for a test: serve(bundle, **settings) -> RunningServer; all stopped after."""
    servers: list[RunningServer] = []

    def start(bundle: Path, *, load: bool = True, **overrides: Any) -> RunningServer:
        server = RunningServer(server_settings(bundle, **overrides), load=load)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def digits_server(digits_bundle: Path) -> Iterator[RunningServer]:
    server = RunningServer(server_settings(digits_bundle))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worse_server(worse_bundle: Path) -> Iterator[RunningServer]:
    server = RunningServer(server_settings(worse_bundle))
    yield server
    server.stop()


@pytest.fixture
def channel_to() -> Iterator[Callable[[RunningServer], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def open_channel(server: RunningServer) -> grpc.Channel:
        channel = grpc.insecure_channel(server.address)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture
def spawn() -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for process in started:
        process.stop()
