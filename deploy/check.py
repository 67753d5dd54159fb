#!/usr/bin/env python3
"""Helpers for deploy/check.sh (run with the venv's python; needs PyYAML and
kubernetes-validate). Each subcommand prints what it checked and exits non-zero on
the first class of failure.

  render KUSTOMIZATION_DIR OUT            concatenate the resources kustomization.yaml lists
  same RENDER_A RENDER_B                  two renders hold the same objects
  validate RENDERED VERSION...            kubernetes-validate --strict per version;
                                          CRD kinds checked against EXPECTED_CRDS
  extract-rules RENDERED OUT              the PrometheusRule's spec as a promtool rules file
  image-args DEPLOY_DIR AUDITOR_BIN       the image's ENTRYPOINT/CMD (deploy/Dockerfile, and
                                          the image `cargo xtask image` built if podman has
                                          it) agree with the DaemonSet's command/args and
                                          with `auditor record --help`
"""
import json
import re
import subprocess
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
    unsupported = sorted(set(kustomization) - {"apiVersion", "kind", "resources", "images"})
    if unsupported:
        raise CheckError(f"kustomization.yaml uses {unsupported}; the python render only "
                         "concatenates `resources` and applies `images` (keep it so, or install kubectl)")
    docs = []
    for resource in kustomization.get("resources") or []:
        path = directory / resource
        if not path.is_file():
            raise CheckError(f"kustomization.yaml lists {resource}, which is not a file here")
        docs.extend(load_all(path))
    for doc in docs:
        apply_images(doc, kustomization.get("images") or [])
    with open(out, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    print(f"rendered {len(docs)} objects from {len(kustomization['resources'])} files to {out}")


def image_name(ref):
    """The repository part of an image reference (no tag, no digest)."""
    ref = ref.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


def apply_images(doc, images):
    """kustomize's `images` transformer, for the fields it supports here (name, newName,
    newTag, digest) on pod templates' containers and initContainers."""
    for entry in images:
        expect_keys("kustomization.yaml images[]", entry, {"name", "newName", "newTag", "digest"})
        if "name" not in entry:
            raise CheckError("kustomization.yaml images[]: every entry needs `name`")
    pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        ref = c.get("image", "")
        for entry in images:
            if image_name(ref) != entry["name"]:
                continue
            name = entry.get("newName", entry["name"])
            if "digest" in entry:
                c["image"] = f"{name}@{entry['digest']}"
            elif "newTag" in entry:
                c["image"] = f"{name}:{entry['newTag']}"
            else:
                rest = ref[len(image_name(ref)):]
                c["image"] = name + rest
            break


def dockerfile_runtime(path):
    """ENTRYPOINT, CMD and the COPY destination of /out/auditor in the runtime stage."""
    lines = Path(path).read_text().splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == "FROM scratch AS runtime")
    except StopIteration:
        raise CheckError(f"{path}: no `FROM scratch AS runtime` stage (cargo xtask image builds that stage)")
    found = {}
    for i, line in enumerate(lines[start + 1:], start + 2):
        t = line.strip()
        for key in ("ENTRYPOINT", "CMD"):
            if t.startswith(key + " "):
                try:
                    value = json.loads(t[len(key) + 1:])
                except json.JSONDecodeError as e:
                    raise CheckError(f"{path}:{i}: {key} must be a JSON array (exec form): {e}")
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise CheckError(f"{path}:{i}: {key} must be a JSON array of strings")
                found[key] = value
        if t.startswith("COPY --from=builder /out/auditor "):
            found["binary"] = t.split()[-1]
    for key in ("ENTRYPOINT", "CMD", "binary"):
        if key not in found:
            what = "COPY --from=builder /out/auditor <path>" if key == "binary" else key
            raise CheckError(f"{path}: the runtime stage has no {what}")
    return found


def record_flags(auditor_bin):
    try:
        out = subprocess.run([auditor_bin, "record", "--help"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise CheckError(f"run `{auditor_bin} record --help`: {e} (build it: cargo build -p auditor, or set AUDITOR_BIN)")
    if out.returncode != 0:
        raise CheckError(f"`{auditor_bin} record --help` exited {out.returncode}: {out.stderr}")
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", out.stdout, re.M))


def flag_values(args, where, flags):
    """--flag value pairs (and bare --flags) of `args` after the subcommand; unknown flags fail."""
    values = {}
    i = 1
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise CheckError(f"{where}: `{a}` is not a flag (positional arguments after `record`?)")
        name, eq, value = a.partition("=")
        if name not in flags:
            raise CheckError(f"{where}: {name} is not a flag of `auditor record` (see auditor record --help)")
        if eq:
            values[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            values[name] = args[i + 1]
            i += 1
        else:
            values[name] = None
        i += 1
    return values


def image_args(deploy, auditor_bin):
    deploy = Path(deploy)
    runtime = dockerfile_runtime(deploy / "Dockerfile")
    flags = record_flags(auditor_bin)
    if len(flags) < 10:
        raise CheckError(f"`{auditor_bin} record --help` lists only {sorted(flags)}: not the record help?")
    entry, cmd = runtime["ENTRYPOINT"], runtime["CMD"]
    if entry != [runtime["binary"]]:
        raise CheckError(f"deploy/Dockerfile: ENTRYPOINT {entry} is not [\"{runtime['binary']}\"], where the binary is copied")
    if not cmd or cmd[0] != "record":
        raise CheckError(f"deploy/Dockerfile: CMD {cmd} must start with `record`")
    cmd_values = flag_values(cmd, "deploy/Dockerfile CMD", flags)

    ds = next((d for d in load_all(deploy / "daemonset.yaml") if d.get("kind") == "DaemonSet"), None)
    if ds is None:
        raise CheckError("deploy/daemonset.yaml: no DaemonSet")
    containers = ds["spec"]["template"]["spec"]["containers"]
    c = next((c for c in containers if c.get("name") == "auditor"), None)
    if c is None:
        raise CheckError("deploy/daemonset.yaml: no container named auditor")
    if "command" in c and c["command"] != entry:
        raise CheckError(f"deploy/daemonset.yaml: command {c['command']} overrides the image's ENTRYPOINT {entry} with something else")
    args = [str(a) for a in c.get("args") or []]
    if not args or args[0] != "record":
        raise CheckError(f"deploy/daemonset.yaml: args {args} must start with `record`")
    ds_values = flag_values(args, "deploy/daemonset.yaml args", flags)
    for name, value in cmd_values.items():
        if ds_values.get(name, "<absent>") != value:
            raise CheckError(f"deploy/daemonset.yaml args: {name} is {ds_values.get(name, '<absent>')!r}, "
                             f"the image's CMD has {value!r}: the args replace CMD, keep its settings")
    ports = {p.get("containerPort") for p in c.get("ports") or []}
    listen = ds_values.get("--listen") or ""
    if not listen.rsplit(":", 1)[-1].isdigit() or int(listen.rsplit(":", 1)[-1]) not in ports:
        raise CheckError(f"deploy/daemonset.yaml: --listen {listen!r} is on none of the container ports {sorted(ports)}")
    print(f"Dockerfile: ENTRYPOINT {entry} (the copied binary), CMD {cmd}")
    print(f"DaemonSet: no command override, args {args}: every flag is in `auditor record --help`, CMD's settings kept")

    kustomization = yaml.safe_load((deploy / "kustomization.yaml").read_text())
    names = [e.get("name") for e in kustomization.get("images") or []]
    if image_name(c["image"]) not in names:
        raise CheckError(f"kustomization.yaml images: no entry for {image_name(c['image'])} (the DaemonSet's image), "
                         "so users cannot set their registry there")

    tag = c["image"]
    try:
        out = subprocess.run(["podman", "image", "inspect", "--format", "{{json .Config}}", tag],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        print(f"podman not installed: the built image {tag} is not checked")
        return
    if out.returncode != 0:
        print(f"podman has no image {tag} (cargo xtask image builds it): not checked")
        return
    config = json.loads(out.stdout)
    for key, want in (("Entrypoint", entry), ("Cmd", cmd)):
        if config.get(key) != want:
            raise CheckError(f"image {tag}: {key} is {config.get(key)}, deploy/Dockerfile has {want}")
    if "/var/lib/auditor" not in (config.get("Volumes") or {}):
        raise CheckError(f"image {tag}: no VOLUME /var/lib/auditor (Volumes: {config.get('Volumes')})")
    if "9090/tcp" not in (config.get("ExposedPorts") or {}):
        raise CheckError(f"image {tag}: 9090/tcp is not exposed (ExposedPorts: {config.get('ExposedPorts')})")
    print(f"image {tag}: Entrypoint, Cmd, Volumes and ExposedPorts match deploy/Dockerfile")


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
        "image-args": (image_args, 2),
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
