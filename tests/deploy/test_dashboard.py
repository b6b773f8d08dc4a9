"""deploy/grafana/vaeserve.json reads only what the server exports, and shows what the docs promise.

`make test-compose` runs the same expressions against a real Prometheus scraping real replicas.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.deploy.metric_names import exported_series, names_in

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "vaeserve.json"
# Grafana's variables, as a query sent straight to Prometheus would spell them.
_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def variable_queries() -> list[str]:
    """The queries that list a variable's values (Grafana's label_values(...), not PromQL)."""
    return [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]


def expressions() -> list[str]:
    """Every panel's PromQL expression, its variables filled in as Grafana would."""
    filled = []
    for expr in [t["expr"] for panel in panels() for t in panel["targets"]]:
        for name, value in _VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"a variable this test does not fill: {expr}"
        filled.append(expr)
    return filled


def test_every_name_the_dashboard_reads_is_exported() -> None:
    series = exported_series()
    for expr in expressions() + variable_queries():
        read = names_in(expr)
        assert read, f"reads no vaeserve metric: {expr}"
        assert read <= set(series), f"not exported by the server: {sorted(read - set(series))} in {expr}"


def test_it_shows_requests_errors_latency_queue_inputs_and_flags() -> None:
    families = {exported_series()[name] for expr in expressions() for name in names_in(expr)}
    assert {
        "vaeserve_requests",
        "vaeserve_request_seconds",
        "vaeserve_queue_depth",
        "vaeserve_queue_seconds",
        "vaeserve_inputs",
        "vaeserve_anomaly_flags",
    } <= families
    quantiles = [e for e in expressions() if "histogram_quantile" in e]
    assert any("vaeserve_request_seconds_bucket" in e and "method" in e and "model" in e for e in quantiles)
    for expr in quantiles:
        assert re.search(r"by \(le\b", expr), f"a quantile needs the buckets summed by le: {expr}"


def test_panels_are_well_formed() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["title"] and panel["description"] and panel["targets"], panel["id"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
