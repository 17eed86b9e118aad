"""The Grafana dashboard in deploy/grafana/ asks only for what /metrics exports: every metric
each panel's query names is one of the live service's families (a counter's `_total`, a
histogram's `_bucket`, `_sum` and `_count` included), and the panels an operator looks for first
are there."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.live import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "balancer.json"


def _exported(metrics: str) -> set[str]:
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", metrics, re.M):
        name, kind = match.groups()
        names.add(name)
        if kind == "counter":
            names.add(name if name.endswith("_total") else f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_every_query_of_the_grafana_dashboard_names_an_exported_metric(api: httpx.Client, web: Any) -> None:
    payload = {"max_tokens": 3, "messages": [{"role": "user", "content": "grafana"}]}
    assert api.post("/completions", json={"model": "gpt-fair", "payload": payload, "wait": 30}).json()[
        "status"
    ]
    exported = _exported(httpx.get(f"{web.url}/metrics", timeout=30).text)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    named = {name for q in queries for name in re.findall(r"\bbalancer_[a-z0-9_]+", q)}
    assert named and named <= exported, sorted(named - exported)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("waiting", "in use", "queue wait", "errors", "in flight", "tokens"):
        assert wanted in titles, wanted
