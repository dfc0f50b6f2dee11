#!/usr/bin/env python3
"""Validate genq's Kubernetes manifests (deploy/k8s) offline.

Kubernetes kinds are checked, strictly (unknown fields are errors), against the schemas shipped
in the kubernetes-validate package; KEDA's kinds against the JSON Schemas in deploy/schemas.
Every kustomization's resources and patches must exist, and the optional Prometheus-trigger
component is applied to the ScaledObject it patches and the result validated too.
Run by scripts/validate-deploy.sh inside its virtual environment.
"""

import copy
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "deploy" / "schemas"
KUBERNETES_VERSION = "1.30.0"
KEDA_SCHEMAS = {
    "ScaledObject": "keda-scaledobject-v1alpha1.json",
    "TriggerAuthentication": "keda-triggerauthentication-v1alpha1.json",
}

errors = []
checked = 0


def fail(where, message):
    errors.append(f"{where}: {message}")


def validate_resource(where, doc):
    global checked
    checked += 1
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        fail(where, "not a Kubernetes resource (no apiVersion/kind)")
        return
    name = (doc.get("metadata") or {}).get("name", "?")
    label = f"{where} {doc['kind']}/{name}"
    if doc["apiVersion"].startswith("keda.sh/"):
        schema_file = KEDA_SCHEMAS.get(doc["kind"])
        if schema_file is None:
            fail(label, "no schema for this KEDA kind in deploy/schemas")
            return
        schema = json.loads((SCHEMAS / schema_file).read_text())
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
            fail(label, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(map(str, e.path))
        fail(label, f"{path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        fail(label, f"unknown kind: {e}")


def load_docs(path):
    try:
        with path.open() as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        fail(path.relative_to(ROOT), f"not valid YAML: {e}")
        return []


def apply_json6902(doc, ops, where):
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = op["path"].strip("/").split("/")
        target = doc
        for p in parts[:-1]:
            target = target[int(p)] if isinstance(target, list) else target[p]
        last = parts[-1]
        if op["op"] != "add":
            fail(where, f"only `add` patches are checked here, not {op['op']}")
        elif isinstance(target, list):
            target.append(op["value"]) if last == "-" else target.insert(int(last), op["value"])
        else:
            target[last] = op["value"]
    return doc


def main():
    resources = {}
    patch_files = set()
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    for k in kustomizations:
        spec = (load_docs(k) or [{}])[0]
        rel = k.relative_to(ROOT)
        for r in spec.get("resources", []):
            if not (k.parent / r).exists():
                fail(rel, f"resource {r} does not exist")
        for p in spec.get("patches", []):
            if "path" in p:
                patch_files.add((k.parent / p["path"]).resolve())
                if not (k.parent / p["path"]).exists():
                    fail(rel, f"patch {p['path']} does not exist")
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patch_files:
            continue
        for i, doc in enumerate(load_docs(path)):
            where = f"{path.relative_to(ROOT)}[{i}]"
            validate_resource(where, doc)
            if isinstance(doc, dict) and "kind" in doc:
                resources[(doc["kind"], (doc.get("metadata") or {}).get("name"))] = doc
    # Components: apply each patch to its target and validate the result.
    for k in kustomizations:
        spec = (load_docs(k) or [{}])[0]
        if spec.get("kind") != "Component":
            continue
        for p in spec.get("patches", []):
            t = p.get("target", {})
            base = resources.get((t.get("kind"), t.get("name")))
            where = f"{k.relative_to(ROOT)} patch {p.get('path')}"
            if base is None:
                fail(where, f"target {t.get('kind')}/{t.get('name')} not found in deploy/k8s")
                continue
            ops = (load_docs(k.parent / p["path"]) or [[]])[0]
            validate_resource(where, apply_json6902(base, ops, where))
    for e in errors:
        print(f"invalid: {e}", file=sys.stderr)
    print(f"k8s: {checked} resources checked against Kubernetes {KUBERNETES_VERSION} and KEDA schemas, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
