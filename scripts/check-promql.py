#!/usr/bin/env python3
"""scripts/check-promql.py - every PromQL expression shipped in deploy/observability parses.

`promtool check rules` checks the alert rules file as Prometheus would load it; the Grafana
dashboard's queries are put into a scratch rules file (Grafana's $variables and $__ macros
replaced by values Prometheus accepts) and checked the same way. That metric names exist is
crates/legate/tests/observability_assets.rs's job; this checks the syntax.
"""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
obs = root / "deploy" / "observability"


def queries(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str) and value.strip():
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def grafana_to_promql(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    # Template variables inside label matchers: any value.
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", ".*", expr)


def run(path):
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    print("\n".join(s for s in (out.stdout.strip(), out.stderr.strip()) if s))
    return out.returncode == 0


ok = run(obs / "prometheus-rules.yaml")
dashboard = json.loads((obs / "grafana-dashboard.json").read_text())
# label_values(...) is Grafana's, not PromQL: check the selector inside it.
exprs = []
for q in queries(dashboard):
    m = re.fullmatch(r"\s*label_values\((.*?)(,\s*\w+)?\)\s*", q, re.S)
    exprs.append(m.group(1) if m else q)
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)
]}]}
with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    yaml.safe_dump(rules, f)
print(f"dashboard: {len(exprs)} queries")
ok = run(f.name) and ok
pathlib.Path(f.name).unlink()
sys.exit(0 if ok else 1)
