"""The series names the server exports, and the vaeserve names a PromQL expression reads.

Shared by the manifests' tests (prometheus-adapter's rules, the Grafana dashboard) and the compose test
(what a real Prometheus scraped), so all of them check against the server's own Metrics class.
"""

from __future__ import annotations

import re

from vaeserve.server.boundary.metrics import Metrics

__all__ = ["exported_series", "names_in"]

# The series each family type exposes (prometheus_client's `_created` samples are left out: not for queries).
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
_OURS = re.compile(r"\bvaeserve_[a-zA-Z0-9_]*")


def exported_series() -> dict[str, str]:
    """Every series name a server's /metrics can show, to the family it belongs to."""
    series = {}
    for family in Metrics().registry.collect():
        for suffix in _SUFFIXES[family.type]:
            series[family.name + suffix] = family.name
    return series


def names_in(expression: str) -> set[str]:
    """The vaeserve_* names a PromQL expression (or a prometheus-adapter query) reads."""
    return set(_OURS.findall(expression))
