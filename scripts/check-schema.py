#!/usr/bin/env python3
"""Validates legate configs against `legate schema`: every examples/*.yaml and every ConfigMap's
`legate.yaml` under deploy/k8s. ${VAR:-default} is expanded to its default, as `legate check`
does without the variable set. Usage: check-schema.py LEGATE_BIN REPO_ROOT"""
import json
import pathlib
import re
import subprocess
import sys

import jsonschema
import yaml

class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans, as legate (serde_yaml_ng) and yaml-language-server read them: only
    true/false. PyYAML's YAML 1.1 would read the key `on:` (retry.on) as a boolean."""


Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for first in "tTfF":
    Yaml12Loader.yaml_implicit_resolvers.setdefault(first, []).append(
        ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )

legate, root = sys.argv[1], pathlib.Path(sys.argv[2])
schema = json.loads(subprocess.run([legate, "schema"], check=True, capture_output=True).stdout)
validator = jsonschema.Draft202012Validator(schema)


def expand(text):
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", text)


def check(name, text):
    doc = yaml.load(expand(text), Loader=Yaml12Loader) or {}
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        print(f"{name}: {'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}")
    return len(errors)


failed = checked = 0
for f in sorted((root / "examples").glob("*.yaml")):
    failed += check(str(f), f.read_text())
    checked += 1
for f in sorted((root / "deploy/k8s").rglob("*.yaml")):
    for doc in yaml.load_all(f.read_text(), Loader=Yaml12Loader):
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            cfg = (doc.get("data") or {}).get("legate.yaml")
            if cfg:
                failed += check(f"{f}:legate.yaml", cfg)
                checked += 1
print(f"schema: {checked} configs checked, {failed} problems")
sys.exit(1 if failed or checked == 0 else 0)
