"""deploy/k8s against the Kubernetes API schemas and against the server's own settings.

No cluster and no network: kubernetes-validate bundles the API's JSON schemas. The kustomization is
rendered as kustomize would render a plain list of `resources`; the container's environment and
arguments go through the server's settings loader, so a port, path or timeout that the manifests and
the server see differently fails here rather than in a rollout.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from vaeserve.server import settings as settings_module
from vaeserve.server import workers
from vaeserve.server.boundary.auth import read_tokens
from vaeserve.server.settings import Settings, load_settings, usable_cores

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes these manifests claim (native gRPC probes are GA since 1.27) and the newest
# the pinned kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
RENDERED_FIELDS = {"apiVersion", "kind", "resources"}  # what `rendered()` does; anything more needs teaching it

Doc = dict[str, Any]


def kustomization() -> Doc:
    doc: Doc = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    return doc


def rendered() -> list[Doc]:
    docs = []
    for name in kustomization()["resources"]:
        text = (K8S / name).read_text(encoding="utf-8")
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def one(docs: list[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return rendered()


@pytest.fixture(scope="module")
def deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment")


@pytest.fixture(scope="module")
def pod(deployment: Doc) -> Doc:
    pod: Doc = deployment["spec"]["template"]
    return pod


@pytest.fixture(scope="module")
def container(pod: Doc) -> Doc:
    (server,) = [c for c in pod["spec"]["containers"] if c["name"] == "server"]
    return server


@pytest.fixture
def settings(container: Doc, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the server builds in the container: its environment and arguments, nothing of ours."""
    assert "command" not in container, "the image's entrypoint is vaeserve-server; give settings in env or args"
    assert "envFrom" not in container, "settings come as literal VAESERVE_* variables, so this test can read them"
    for name in list(os.environ):
        if name.startswith("VAESERVE_"):
            monkeypatch.delenv(name)
    for var in container.get("env", []):
        assert "value" in var, f"{var['name']}: a literal value, so this test reads what the server reads"
        monkeypatch.setenv(var["name"], var["value"])
    # The tokens file is in the Secret, not on this machine; its placeholder is checked on its own below.
    monkeypatch.setattr(settings_module, "read_tokens", lambda path: ["token"])
    return load_settings(container.get("args", []))


def mount_of(container: Doc, pod: Doc, volume_key: str) -> tuple[Doc, Doc]:
    """The container's one mount of a volume of this kind (secret, persistentVolumeClaim...), and the volume."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = [(m, volumes[m["name"]]) for m in container["volumeMounts"] if volume_key in volumes[m["name"]]]
    assert len(mounts) == 1, f"expected one {volume_key} volume mounted, found {len(mounts)}"
    return mounts[0]


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_resources_list_every_manifest() -> None:
    k = kustomization()
    assert set(k) <= RENDERED_FIELDS, f"this test renders only {sorted(RENDERED_FIELDS)}; got {sorted(k)}"
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    listed = k["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, (
        f"not listed: {sorted(on_disk - set(listed))}; missing: {sorted(set(listed) - on_disk)}"
    )
    assert not list(K8S.glob("*.yml")), "name manifests .yaml"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_against_the_api_schemas(docs: list[Doc], version: str) -> None:
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields are errors
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, f"against Kubernetes {version}:\n" + "\n".join(errors)


def test_names_are_unique(docs: list[Doc]) -> None:
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids))


def test_image_is_the_one_compose_builds(container: Doc) -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    image = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", compose["services"]["server"]["image"])  # ${VAR:-default}
    assert container["image"] == image


def test_ports_and_probes_follow_the_settings(container: Doc, pod: Doc, settings: Settings) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "http": settings.http_port, "metrics": settings.metrics_port}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert probe["grpc"] == {"port": settings.port, "service": ""}, kind  # grpc.health.v1, the server's ""
    # The kubelet's gRPC probe sends no token and speaks plaintext.
    assert not settings.auth_health and settings.tls_cert is None
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"  # prometheus_client's start_http_server


def test_no_service_links_in_the_settings_namespace(pod: Doc) -> None:
    """Kubernetes would set VAESERVE_PORT=tcp://<ip>:<port> (from the Service named vaeserve), a setting's name."""
    assert pod["spec"]["enableServiceLinks"] is False


def test_termination_outlasts_the_drain(pod: Doc, settings: Settings) -> None:
    assert settings.drain_delay_s > 0, "without a drain delay, clients still routed here meet a closed port"
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.drain_delay_s + settings.grace_s


def test_rollout_keeps_every_replica_serving(deployment: Doc) -> None:
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0 and strategy["rollingUpdate"]["maxSurge"] >= 1


def test_tokens_come_from_the_secret(docs: list[Doc], container: Doc, pod: Doc, settings: Settings) -> None:
    mount, volume = mount_of(container, pod, "secret")
    assert settings.auth_tokens is not None
    assert str(settings.auth_tokens.parent) == mount["mountPath"] and mount.get("readOnly")
    secret = one(docs, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert "items" not in volume["secret"], "each key is a file named after it"
    assert settings.auth_tokens.name in secret.get("stringData", {})


def test_the_token_placeholder_is_refused(docs: list[Doc], tmp_path: Path) -> None:
    """Applied unchanged, the server refuses to start: no deployment serves a token published in git."""
    placeholder = tmp_path / "tokens"
    placeholder.write_text(one(docs, "Secret")["stringData"]["tokens"], encoding="utf-8")
    with pytest.raises(ValueError, match="holds no tokens"):
        read_tokens(placeholder)


def test_models_come_from_the_volume(docs: list[Doc], container: Doc, pod: Doc, settings: Settings) -> None:
    mount, volume = mount_of(container, pod, "persistentVolumeClaim")
    assert settings.bundle is None and settings.model_repository is not None
    assert str(settings.model_repository) == mount["mountPath"]
    assert mount.get("readOnly") and volume["persistentVolumeClaim"].get("readOnly")
    claim = one(docs, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_runs_as_non_root_on_a_read_only_root(container: Doc, pod: Doc) -> None:
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    assert pod["spec"]["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert not container["securityContext"]["allowPrivilegeEscalation"]
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def test_processes_and_engine_threads_fit_the_cpu_limit(
    container: Doc, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers x onnxruntime threads within the pod's CPU limit, as the pod's cgroup quota would set them
    (intra_op_threads 0 with one process would mean a thread per core of the node, whatever the limit)."""
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(f"{int(limit * 100_000)} 100000\n")
    monkeypatch.setattr(workers, "usable_cores", lambda: usable_cores(cpu_max))
    monkeypatch.setattr(settings_module, "usable_cores", lambda: usable_cores(cpu_max))
    count = settings.worker_count
    threads = workers.worker_settings(settings, 0, 1, None).intra_op_threads if count > 1 else settings.intra_op_threads
    assert threads >= 1 and count * threads <= max(1, math.ceil(limit)), (count, threads)
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


def test_deployment_selects_its_own_pods(deployment: Doc, pod: Doc) -> None:
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod["metadata"]["labels"].items()


def test_services_select_the_pods_and_name_their_ports(docs: list[Doc], container: Doc, pod: Doc) -> None:
    services = [d for d in docs if d["kind"] == "Service"]
    container_ports = {p["name"] for p in container["ports"]}
    assert any(s["spec"].get("clusterIP") == "None" for s in services), "a headless Service for round robin"
    assert any(s["spec"].get("clusterIP") != "None" for s in services), "a ClusterIP Service"
    for service in services:
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        assert selector and selector.items() <= pod["metadata"]["labels"].items(), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{name}: {port['targetPort']}"
            assert port["name"] == port["targetPort"], f"{name}: {port['name']}"
            assert port.get("appProtocol") == ("grpc" if port["name"] == "grpc" else "http"), f"{name}: {port}"


def test_autoscaler_and_budget_target_the_deployment(docs: list[Doc], deployment: Doc, container: Doc) -> None:
    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in container["resources"]["requests"], "CPU utilization is measured against the request"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count; a re-apply must not reset it"

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a budget no eviction can meet"
    else:
        assert pdb["spec"]["maxUnavailable"] >= 1
