"""deploy/k8s/autoscale-on-load: the Component that scales on requests in flight, and prometheus-adapter's rules.

The base with the Component's patches applied is validated as the base is (kubernetes-validate, strict);
the adapter's rules are read as prometheus-adapter reads them and checked against the families the
server exports, so a renamed metric fails here rather than as an HPA stuck on `<unknown>`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.metric_names import exported_series, names_in
from tests.deploy.test_k8s import K8S, KUBERNETES_VERSIONS, Doc, one, rendered

COMPONENT = K8S / "autoscale-on-load"
RULES = COMPONENT / "prometheus-adapter-rules.yaml"
# Lists a strategic merge patch replaces whole (autoscaling/v2 marks `metrics` atomic); the renderer below
# knows no other list semantics, so a patch touching another list fails until it is taught.
ATOMIC_LISTS = {("HorizontalPodAutoscaler", "spec.metrics")}
SERIES_QUERY = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{[^}]*\}$")


def load(path: Path) -> Doc:
    doc: Doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def component() -> Doc:
    return load(COMPONENT / "kustomization.yaml")


def merge(target: Doc, patch: Doc, kind: str, path: str = "") -> None:
    """A strategic merge patch as kustomize applies it to these fields: maps merge, atomic lists replace."""
    for key, value in patch.items():
        where = f"{path}.{key}".lstrip(".")
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value, kind, where)
            continue
        if isinstance(value, list):
            assert (kind, where) in ATOMIC_LISTS, f"{kind} {where}: a list this renderer does not know how to merge"
        target[key] = copy.deepcopy(value)


def with_component() -> list[Doc]:
    docs = copy.deepcopy(rendered())
    for entry in component()["patches"]:
        patch = load(COMPONENT / entry["path"])
        target = [d for d in docs if (d["kind"], d["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
        assert len(target) == 1, f"{entry['path']} patches {patch['kind']}/{patch['metadata']['name']}: not one"
        assert target[0]["apiVersion"] == patch["apiVersion"], entry["path"]
        merge(target[0], {k: v for k, v in patch.items() if k not in {"apiVersion", "kind", "metadata"}}, patch["kind"])
    return docs


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return with_component()


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    config: dict[str, Any] = yaml.safe_load(load(RULES)["data"]["config.yaml"])
    assert set(config) == {"rules"}, "custom metrics rules only (no externalRules or resourceRules)"
    rules: list[dict[str, Any]] = config["rules"]
    return rules


def exposed(rule: dict[str, Any]) -> str:
    """The custom metric's name prometheus-adapter serves for the series the rule's seriesQuery names."""
    series = SERIES_QUERY.fullmatch(rule["seriesQuery"])
    assert series, f"name the series in the seriesQuery: {rule['seriesQuery']}"
    assert re.fullmatch(rule["name"]["matches"], series[1]), rule["name"]
    name: str = rule["name"]["as"]
    assert name and "$" not in name, "spell the served name out in `as`"
    return name


def test_the_component_is_only_patches() -> None:
    k = component()
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")
    assert set(k) == {"apiVersion", "kind", "patches"}, "the test renders patches only; teach it anything more"
    patched = {entry["path"] for entry in k["patches"]}
    assert all(set(entry) == {"path"} for entry in k["patches"])
    on_disk = {p.name for p in COMPONENT.iterdir()}
    assert on_disk == {"kustomization.yaml", RULES.name, *patched}, on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_with_the_component_validates(docs: list[Doc], version: str) -> None:
    errors = []
    for doc in [*docs, load(RULES)]:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_base_stays_on_cpu_alone() -> None:
    """`kubectl apply -k deploy/k8s` needs no prometheus-adapter: a Pods metric would leave the HPA unable."""
    hpa = one(rendered(), "HorizontalPodAutoscaler")
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource"}


def test_the_hpa_scales_the_deployment_on_a_metric_the_adapter_serves(
    docs: list[Doc], rules: list[dict[str, Any]]
) -> None:
    hpa, deployment = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "vaeserve")
    assert target["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}, "CPU stays: it still scales out when the adapter is down"
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] in {exposed(rule) for rule in rules}
    assert "selector" not in pods["metric"], "the adapter's series carry no label to select on"
    assert pods["target"]["type"] == "AverageValue" and float(pods["target"]["averageValue"]) > 0


def test_each_rule_reads_families_the_server_exports(rules: list[dict[str, Any]]) -> None:
    series = exported_series()
    assert len({exposed(rule) for rule in rules}) == len(rules), "two rules serve one name"
    for rule in rules:
        name = SERIES_QUERY.fullmatch(rule["seriesQuery"])
        assert name and name[1] in series, f"{rule['seriesQuery']}: the server exports no {name and name[1]}"
        read = names_in(rule["metricsQuery"])
        assert read <= set(series), f"{rule['metricsQuery']}: reads {sorted(read - set(series))}"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        # Per pod: the HPA asks for the metric of each of its pods by namespace and pod name.
        assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}}
    assert {"vaeserve_requests_in_flight", "vaeserve_queue_depth"} <= {exposed(rule) for rule in rules}
