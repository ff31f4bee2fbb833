"""Metrics a production operator needs, and the shipped alert rules and dashboard: every
expression parses as PromQL (promql-parser, a real parser of the language) and names only
metrics this service exports (read from a real app's /metrics)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from rlme.service.app import create_app
from rlme.service.metrics import latency_buckets

from support import service_settings

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rlme-alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "rlme.json"
FROM_PROMETHEUS = {"up"}  # made by Prometheus itself, not exported by the service


def metric_names(node: Any, found: set[str]) -> set[str]:
    """Every metric a PromQL expression selects."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        found.add(node.name)
        return found
    for child in ("args", "vector_selector", "expr", "param", "lhs", "rhs"):
        value = getattr(node, child, None)
        for part in value if isinstance(value, list) else [value]:
            if part is not None and type(part).__module__ == "promql_parser":
                metric_names(part, found)
    return found


def parse(expr: str) -> Any:
    return promql_parser.parse(expr.replace("$__rate_interval", "5m"))


@pytest.fixture(scope="module")
async def exported() -> str:
    """A loaded app's /metrics after one reward request."""
    app = create_app(service_settings())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        await app.state.loading
        body = {"items": [{"prompt": "2+2?", "response": "4"}], "questions": [{"id": "q", "text": "Right?"}]}
        assert (await client.post("/v1/rewards", json=body)).status_code == 200
        return (await client.get("/metrics")).text


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("",)}


def samples(text: str) -> set[str]:
    """Every series name the exposition can hold, also for labelled families without samples yet."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def test_process_build_queue_wait_and_in_flight_metrics_are_exported(exported: str) -> None:
    names = families(exported)
    for name in (
        "process_cpu_seconds_total",  # process collector
        "python_info",  # platform collector
        "python_gc_collections_total",
        "rlme_build_info",
        "rlme_requests_in_flight",
        "rlme_queue_wait_seconds",
        "rlme_evaluator_up",
    ):
        assert name in names, name
    assert 'rlme_evaluator_up{evaluator="default"} 1.0' in exported
    assert re.search(r'rlme_queue_wait_seconds_count\{evaluator="default"\} [1-9]', exported)
    assert "rlme_requests_in_flight 1.0" in exported  # the /metrics request itself


def test_latency_buckets_reach_the_request_timeout() -> None:
    assert latency_buckets(300)[-3:] == (120, 240, 300)
    assert latency_buckets(3600)[-2:] == (1920, 3600)
    assert latency_buckets(0.001) == (0.0005, 0.001)
    assert list(latency_buckets(300)) == sorted(set(latency_buckets(300)))


def test_alert_rules_parse_and_use_exported_metrics(exported: str) -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 6
    known = samples(exported) | FROM_PROMETHEUS
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        used = metric_names(parse(rule["expr"]), set())
        assert used and used <= known, (rule["alert"], used - known)


def test_dashboard_panels_parse_and_use_exported_metrics(exported: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = samples(exported) | FROM_PROMETHEUS
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(dashboard["panels"]) >= 12
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for target in targets:
        used = metric_names(parse(target["expr"]), set())
        assert used and used <= known, (target["expr"], used - known)


def test_a_bad_expression_is_caught() -> None:  # the checks above can fail
    with pytest.raises(ValueError):
        parse("sum(rate(rlme_evaluations_total[5m])")
    assert metric_names(parse("rate(a[5m]) / on() b"), set()) == {"a", "b"}
