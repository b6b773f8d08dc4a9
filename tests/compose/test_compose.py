"""The deployment end to end: docker-compose.yml and the images on a real Docker engine (make test-compose).

Sets up what it needs (docker.io and docker-compose from apt, dockerd, the local base image once, the
wheel cache if absent), builds the images, then runs a uniquely named compose project: a client
container's scores equal an in-process server's, SIGTERM drains a request in flight and a restart
keeps serving, three replicas share round-robin calls, and the `monitoring` profile's Prometheus
scrapes every replica. The project is taken down, volumes included, however the test ends. Stage times
are printed; BASE_IMAGE picks another base image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.deploy.metric_names import names_in
from tests.deploy.test_dashboard import expressions
from tests.serving import RunningServer, server_settings
from vaeserve.client import Client

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
LOCAL_BASE = "vaeserve-base:3.11-bookworm"
BASE_IMAGE = os.environ.get("BASE_IMAGE", LOCAL_BASE)
# Compose files read the environment: keep the caller's VAESERVE_* settings out of the deployment.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("VAESERVE_")},
    "BASE_IMAGE": BASE_IMAGE,
    "DEBIAN_FRONTEND": "noninteractive",
}
ROWS, K, SEED = 200, 100, 1234
SLOW_K, SLOW_COPIES = 10_000, 2  # a Score request computing for seconds: in flight at SIGTERM
APT_PACKAGES = {"docker": "docker.io", "docker-compose": "docker-compose", "debootstrap": "debootstrap"}

Stage = Callable[[str], contextlib.AbstractContextManager[None]]
Compose = Callable[..., str]


def sh(*cmd: str, stdin: bytes | None = None, timeout: float = 900, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, input=stdin, capture_output=True, timeout=timeout)
    if done.returncode:
        output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{output}")
    return done.stdout.decode()


def docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def ensure_docker_engine() -> None:
    """CI runs as root on a fresh machine: install the engine and start it when missing."""
    missing = [package for tool, package in APT_PACKAGES.items() if not shutil.which(tool)]
    if missing:
        sh("apt-get", "update", "-q")
        sh("apt-get", "install", "-y", "-q", *missing)
    if docker_up():
        return
    with open("/var/log/dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)  # outlives the test
    deadline = time.monotonic() + 60
    while not docker_up():
        assert time.monotonic() < deadline, "dockerd did not start in 60 s: see /var/log/dockerd.log"
        time.sleep(1)


@pytest.fixture(scope="module")
def stage(request: pytest.FixtureRequest) -> Stage:
    """Times a stage and prints it past pytest's output capture."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    assert reporter is not None and capture is not None

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[compose] {name}: {time.monotonic() - start:.1f} s")

    return timed


@pytest.fixture(scope="module")
def images(stage: Stage) -> None:
    with stage("docker engine"):
        ensure_docker_engine()
    if BASE_IMAGE == LOCAL_BASE:
        with stage("base image"):
            sh("docker/build-base-image.sh", LOCAL_BASE)
    if not (REPO / ".wheels").is_dir():
        with stage("wheel cache"):
            sh("docker/build-wheels.sh")
    with stage("images"):
        sh("docker-compose", "--profile", "monitoring", "build", "server", "client", "prometheus")


def healthy_servers(compose: Compose, replicas: int, timeout: float = 120) -> list[str]:
    """The server containers' ids, once `replicas` of them report healthy."""
    deadline = time.monotonic() + timeout
    while True:
        ids = compose("ps", "-q", "server").split()
        states = sh("docker", "inspect", "-f", "{{.State.Health.Status}}", *ids).split() if ids else []
        if len(ids) == replicas and set(states) == {"healthy"}:
            return ids
        if time.monotonic() > deadline:
            raise AssertionError(
                f"servers {states}, not {replicas} healthy after {timeout} s:\n"
                + compose("logs", "--tail", "20", "server")
            )
        time.sleep(1)


@pytest.fixture(scope="module")
def compose(images: None, stage: Stage) -> Iterator[Compose]:
    project = f"vaeservetest{os.getpid()}{secrets.token_hex(3)}"

    def run(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
        # The profile makes `down` take Prometheus and its volume too; `up` starts only the services named.
        return sh("docker-compose", "-p", project, "--profile", "monitoring", *args, stdin=stdin, env=env)

    try:
        with stage("up + healthy"):
            run("up", "-d", "server")
            healthy_servers(run, 1)
        yield run
    finally:
        with stage("down"):
            run("down", "-v", "--remove-orphans")
        label = f"label=com.docker.compose.project={project}"
        left = [sh("docker", kind, "ls", "-q", "--filter", label) for kind in ("container", "volume", "network")]
        assert not "".join(left).strip(), f"project {project} left behind: {left}"


def digits() -> np.ndarray:
    return load_digits().data[:ROWS]


def test_client_container_scores_equal_in_process_server(compose: Compose, stage: Stage, digits_bundle: Path) -> None:
    x = digits()
    npy = io.BytesIO()
    np.save(npy, x)
    # Data in on stdin and the CSV out on stdout: no bind mount, so it works with any engine.
    script = (
        f"cat > /tmp/x.npy && vaeserve --target server:50051 score /tmp/x.npy --k {K} --seed {SEED} "
        f"--out /tmp/scores.csv --json >&2 && cat /tmp/scores.csv"
    )
    with stage("score in a client container"):
        served = compose("run", "--rm", "-T", "client", "sh", "-c", script, stdin=npy.getvalue())
    rows = list(csv.DictReader(io.StringIO(served)))
    server = RunningServer(server_settings(digits_bundle))
    try:
        with Client(server.address) as client:
            expected = client.score(x, k=K, seed=SEED)
    finally:
        server.stop()
    assert [int(r["index"]) for r in rows] == list(range(ROWS))
    # The CSV keeps 6 significant digits: up to 5e-6 relative.
    np.testing.assert_allclose([float(r["log_px"]) for r in rows], expected.log_px, rtol=1e-5)
    np.testing.assert_allclose([float(r["elbo"]) for r in rows], expected.elbo, rtol=1e-5)


def test_restart_drains_the_request_in_flight_and_serves_again(compose: Compose, stage: Stage) -> None:
    port = compose("port", "server", "50051").strip().rsplit(":", 1)[1]
    with Client(f"127.0.0.1:{port}", retries=0) as client, ThreadPoolExecutor(1) as pool:
        x = np.tile(digits(), (SLOW_COPIES, 1))
        in_flight = pool.submit(lambda: (client.score(x, k=SLOW_K, seed=SEED), time.monotonic()))
        time.sleep(0.5)
        assert not in_flight.done(), "the request finished before SIGTERM: raise SLOW_COPIES"
        sigterm = time.monotonic()
        with stage("restart (drain + start)"):
            compose("restart", "server")
        scores, finished = in_flight.result()
    assert len(scores) == SLOW_COPIES * ROWS and finished > sigterm
    assert time.monotonic() - sigterm < 40, "the server was killed, not stopped by SIGTERM"
    with stage("healthy after restart"):
        healthy_servers(compose, 1)
    assert "digits" in compose("run", "--rm", "-T", "client", "vaeserve", "--target", "server:50051", "info")


def test_three_replicas_share_round_robin_calls(compose: Compose, stage: Stage) -> None:
    with stage("scale to 3 + healthy"):
        compose("up", "-d", "--scale", "server=3", "server")
        ids = healthy_servers(compose, 3)
    hostnames = set(sh("docker", "inspect", "-f", "{{.Config.Hostname}}", *ids).split())
    # One channel for all calls: the replicas answer in turn (a CLI call would open a channel each).
    snippet = (
        "from vaeserve.client import Client\n"
        "with Client('dns:///server:50051', round_robin=True) as c:\n"
        "    print(*[c.info().served_by.replica for _ in range(30)])"
    )
    with stage("30 round-robin calls"):
        replicas = compose("run", "--rm", "-T", "client", "python", "-c", snippet).split()
    assert len(replicas) == 30
    assert set(replicas) == hostnames


def promql(port: str, query: str) -> list[dict[str, Any]]:
    """An instant query to the compose Prometheus's HTTP API; a query it cannot run fails with its error."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{query}: {exc.code} {exc.read().decode(errors='replace')}") from exc
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def scraped_from(port: str, name: str) -> set[str]:
    """The instances Prometheus has a `name` series from (none while it is still starting)."""
    try:
        return {r["metric"]["instance"] for r in promql(port, f'count by (instance) ({name}{{job="vaeserve"}})')}
    except (AssertionError, OSError):
        return set()


def test_prometheus_scrapes_every_replica(compose: Compose, stage: Stage) -> None:
    """Found by DNS on the service name: every series the dashboard reads, from every replica; and each of
    the dashboard's expressions is one this Prometheus runs."""
    with stage("3 replicas + prometheus"):
        compose("up", "-d", "--scale", "server=3", "server")
        ids = healthy_servers(compose, 3)
        compose("up", "-d", "prometheus")
    template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    instances = {f"{address}:8002" for address in sh("docker", "inspect", "-f", template, *ids).split()}
    assert len(instances) == 3
    # Score calls on each replica (queued engine runs, default anomaly scores): the labelled families appear.
    snippet = (
        "import numpy as np\n"
        "from vaeserve.client import Client\n"
        "x = np.random.default_rng(0).integers(0, 17, (8, 64)).astype(float)\n"
        "with Client('dns:///server:50051', round_robin=True) as c:\n"
        "    for _ in range(30):\n"
        "        c.score(x)\n"
    )
    with stage("30 round-robin Score calls"):
        compose("run", "--rm", "-T", "client", "python", "-c", snippet)
    port = compose("port", "prometheus", "9090").strip().rsplit(":", 1)[1]
    wanted = sorted({name for expr in expressions() for name in names_in(expr)})
    with stage(f"{len(wanted)} series scraped from 3 replicas"):
        deadline = time.monotonic() + 90
        while True:
            unseen = {name: sorted(instances - scraped_from(port, name)) for name in wanted}
            missing = {name: left for name, left in unseen.items() if left}
            if not missing:
                break
            assert time.monotonic() < deadline, f"not scraped after 90 s: {missing}"
            time.sleep(2)
    for expr in expressions():
        promql(port, expr)
    assert promql(port, 'sum(vaeserve_ready{job="vaeserve"})')[0]["value"][1] == "3"


def test_workers_share_the_containers_port(compose: Compose, stage: Stage) -> None:
    with stage("one server with VAESERVE_WORKERS=2 + healthy"):
        compose("up", "-d", "--scale", "server=1", "server", env={"VAESERVE_WORKERS": "2"})
        (server,) = healthy_servers(compose, 1)
    hostname = sh("docker", "inspect", "-f", "{{.Config.Hostname}}", server).strip()
    # A connection stays with the worker that accepted it: fresh clients land on both.
    snippet = (
        "from vaeserve.client import Client\n"
        "seen = set()\n"
        "for _ in range(24):\n"
        "    with Client('server:50051') as c:\n"
        "        seen.add(c.info().served_by.replica)\n"
        "print(*sorted(seen))"
    )
    with stage("24 fresh connections"):
        replicas = compose("run", "--rm", "-T", "client", "python", "-c", snippet).split()
    assert replicas == [f"{hostname}/w0", f"{hostname}/w1"]
