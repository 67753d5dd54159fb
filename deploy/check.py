#!/usr/bin/env python3
"""Helpers for deploy/check.sh (run with the venv's python; needs PyYAML and
kubernetes-validate). Each subcommand prints what it checked and exits non-zero on
the first class of failure.

  render KUSTOMIZATION_DIR OUT            concatenate the resources kustomization.yaml lists
  same RENDER_A RENDER_B                  two renders hold the same objects
  validate RENDERED VERSION...            kubernetes-validate --strict per version;
                                          CRD kinds checked against EXPECTED_CRDS
  extract-rules RENDERED OUT              the PrometheusRule's spec as a promtool rules file
"""
import sys
from pathlib import Path

import yaml

# Kinds kubernetes-validate has no schema for: the apiVersion they must have, and the
# fields (a small subset of the prometheus-operator CRD schemas) they may use.
POD_METRICS_ENDPOINT_FIELDS = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval",
    "scrapeTimeout", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
    "metricRelabelings", "relabelings", "proxyUrl", "enableHttp2", "filterRunning",
    "followRedirects", "tlsConfig", "bearerTokenSecret", "basicAuth", "oauth2",
    "authorization",
}
RELABEL_FIELDS = {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
RULE_GROUP_FIELDS = {"name", "interval", "rules", "partial_response_strategy", "limit", "query_offset", "labels"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


class CheckError(Exception):
    pass


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def ident(doc):
    meta = doc.get("metadata") or {}
    return (doc.get("apiVersion"), doc.get("kind"), meta.get("namespace", ""), meta.get("name"))


def render(directory, out):
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = sorted(set(kustomization) - {"apiVersion", "kind", "resources"})
    if unsupported:
        raise CheckError(f"kustomization.yaml uses {unsupported}; the python render only "
                         "concatenates `resources` (keep it so, or install kubectl)")
    docs = []
    for resource in kustomization.get("resources") or []:
        path = directory / resource
        if not path.is_file():
            raise CheckError(f"kustomization.yaml lists {resource}, which is not a file here")
        docs.extend(load_all(path))
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    print(f"rendered {len(docs)} objects from {len(kustomization['resources'])} files to {out}")


def same(a, b):
    da = {ident(d): d for d in load_all(a)}
    db = {ident(d): d for d in load_all(b)}
    if set(da) != set(db):
        raise CheckError(f"renders differ in objects: only in {a}: {sorted(map(str, set(da) - set(db)))}; "
                         f"only in {b}: {sorted(map(str, set(db) - set(da)))}")
    differing = [k for k in da if da[k] != db[k]]
    if differing:
        raise CheckError(f"renders differ in the content of {differing}")
    print(f"{a} and {b} hold the same {len(da)} objects")


def expect_keys(where, obj, allowed):
    if not isinstance(obj, dict):
        raise CheckError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise CheckError(f"{where}: unknown fields {unknown} (allowed: {sorted(allowed)})")


def check_relabelings(where, items):
    if not isinstance(items, list):
        raise CheckError(f"{where}: expected a list")
    for i, r in enumerate(items):
        expect_keys(f"{where}[{i}]", r, RELABEL_FIELDS)
        if r.get("action", "replace") not in RELABEL_ACTIONS:
            raise CheckError(f"{where}[{i}].action: {r.get('action')!r} is no relabel action")


def check_podmonitor(doc):
    name = f"PodMonitor {ident(doc)[2]}/{ident(doc)[3]}"
    spec = doc.get("spec")
    expect_keys(f"{name} spec", spec, {
        "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "namespaceSelector",
        "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
        "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeClass"})
    if not isinstance(spec.get("selector"), dict):
        raise CheckError(f"{name}: spec.selector is required")
    endpoints = spec.get("podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise CheckError(f"{name}: spec.podMetricsEndpoints must be a non-empty list")
    for i, ep in enumerate(endpoints):
        expect_keys(f"{name} podMetricsEndpoints[{i}]", ep, POD_METRICS_ENDPOINT_FIELDS)
        for key in ("relabelings", "metricRelabelings"):
            if key in ep:
                check_relabelings(f"{name} podMetricsEndpoints[{i}].{key}", ep[key])


def check_prometheusrule(doc):
    name = f"PrometheusRule {ident(doc)[2]}/{ident(doc)[3]}"
    spec = doc.get("spec")
    expect_keys(f"{name} spec", spec, {"groups"})
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        raise CheckError(f"{name}: spec.groups must be a non-empty list")
    for g in groups:
        expect_keys(f"{name} group {g.get('name')!r}", g, RULE_GROUP_FIELDS)
        for r in g.get("rules") or []:
            expect_keys(f"{name} rule {r.get('alert') or r.get('record')!r}", r, RULE_FIELDS)
            if ("alert" in r) == ("record" in r) or not isinstance(r.get("expr"), str):
                raise CheckError(f"{name}: each rule needs exactly one of alert/record and an expr string: {r}")


EXPECTED_CRDS = {
    "PodMonitor": ("monitoring.coreos.com/v1", check_podmonitor),
    "PrometheusRule": ("monitoring.coreos.com/v1", check_prometheusrule),
}


def validate(rendered, versions):
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    docs = load_all(rendered)
    failures = 0
    supported = kubernetes_validate.utils.all_versions()
    print(f"kubernetes-validate {kubernetes_validate.__version__}: schemas for "
          f"{supported[0]}..{supported[-1]}")
    for version in versions:
        if not any(v.startswith(version + ".") or v == version for v in supported):
            raise CheckError(f"kubernetes-validate has no schemas for Kubernetes {version}")
        for doc in docs:
            api, kind, ns, nm = ident(doc)
            label = f"{kind} {ns + '/' if ns else ''}{nm}"
            try:
                got = kubernetes_validate.validate(doc, version, strict=True)
                print(f"  ok   {version}: {label} ({api}, schema {got}, strict)")
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                print(f"  FAIL {version}: {label}: {path}: {e.message}")
                failures += 1
            except SchemaNotFoundError:
                expected = EXPECTED_CRDS.get(kind)
                if expected is None:
                    print(f"  FAIL {version}: {label}: no schema for {api} and not a known CRD")
                    failures += 1
                    continue
                if api != expected[0]:
                    print(f"  FAIL {version}: {label}: apiVersion {api}, expected {expected[0]}")
                    failures += 1
                    continue
                try:
                    expected[1](doc)
                    print(f"  ok   {version}: {label} (CRD {api}: parsed, fields checked)")
                except CheckError as e:
                    print(f"  FAIL {version}: {e}")
                    failures += 1
    if failures:
        raise CheckError(f"{failures} validation failure(s)")


def extract_rules(rendered, out):
    rules = [d for d in load_all(rendered) if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise CheckError(f"expected one PrometheusRule, found {len(rules)}")
    header = ("# Generated by deploy/check.sh from deploy/prometheusrule.yaml (spec); "
              "do not edit.\n")
    with open(out, "w") as f:
        f.write(header)
        yaml.safe_dump(rules[0]["spec"], f, sort_keys=False)
    n = sum(len(g.get("rules") or []) for g in rules[0]["spec"]["groups"])
    print(f"wrote {n} rules of PrometheusRule {ident(rules[0])[3]} to {out}")


def main(argv):
    commands = {
        "render": (render, 2),
        "same": (same, 2),
        "extract-rules": (extract_rules, 2),
    }
    try:
        if len(argv) >= 3 and argv[0] == "validate":
            validate(argv[1], argv[2:])
        elif argv and argv[0] in commands and len(argv) == commands[argv[0]][1] + 1:
            commands[argv[0]][0](*argv[1:])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (CheckError, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
