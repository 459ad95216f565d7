#!/usr/bin/env python3
"""Checks the Helm chart (deploy/helm/cdp) and the Strimzi topics (deploy/strimzi/topics.yaml)
without a cluster: what CI can prove about them.

- Helm's own engine (helm-python-sdk) lints and renders the chart for the default values,
  deploy/values-production.yaml, and each with the other autoscaling mode (HPA / KEDA).
- Every rendered manifest validates against the Kubernetes API schemas (kubernetes-validate,
  strict: unknown fields fail) for the oldest Kubernetes the chart supports and the newest known;
  the custom resources (KEDA, Prometheus Operator, Strimzi) against schemas of the fields used.
- The wiring a working install depends on: the resolver and activation, which keep RocksDB
  state under --data, are StatefulSets of at most one replica with a PVC at --data (no emptyDir)
  behind a headless Service, and no autoscaler targets them; probes hit /healthz and /readyz on the port the process listens on
  (as the cdp binary itself resolves the rendered config and environment); pods run as non-root
  with a read-only root filesystem and a writable /tmp; Services, PDBs, autoscalers, the
  ServiceMonitor and the NetworkPolicy select the pods they are meant for; the rendered config is
  accepted by the binary and its topic names are the binary's defaults; the TOML renderer
  round-trips integers, floats and awkward strings.
- The Strimzi topics are exactly the binary's default topics, with the retention the resolver's
  restore needs (signals and commands kept forever) and compaction for the membership topic.
- values.schema.json rejects bad values at install, with a message naming the key.
- deploy/Dockerfile builds in one stage and runs the binary from a slim non-root image, as the
  uid the chart expects and at the path the chart calls.

Usage: check-chart.py --topic SECTION.KEY=NAME ... [--cdp PATH/TO/cdp]
(one --topic per `*_topic` key, and `topic` key of a destination, of `cdp config --print-default`;
tests/deploy.rs passes them).
Run it with the Python of the venv scripts/install-chart-tools.sh creates.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "cdp"
PRODUCTION = ROOT / "deploy" / "values-production.yaml"
TOPICS = ROOT / "deploy" / "strimzi" / "topics.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RELEASE = "cdp"
NAMESPACE = "data"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]
STAGES = {"ingest": "ingest", "resolver": "resolve", "activation": "activate"}
# The collector (`cdp collect`) runs only where `collector.enabled`; it serves on collect.listen.
COLLECTOR = "collector"
# Where each stage's binary takes its listen address from: (config section, variable).
LISTEN = {COLLECTOR: ("collect", "CDP_COLLECT__LISTEN")}
# The stand-in for the collector's write keys from their Secret: TOML, as the Secret holds it.
WRITE_KEYS_STANDIN = '[{tenant = "from-secret", key_sha256 = "' + "0" * 64 + '"}]'
# Stages whose --data holds state that must outlive the pod (the resolver's identity graph;
# activation's membership, versions, offsets and webhook queue): StatefulSets with a PVC.
STATEFUL = ("resolver", "activation")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Failures:
    """Collects every failed check, so one run reports all of them."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"FAIL {what}", flush=True)
        return ok


# --- Schemas of the custom resources the chart and topics use (the fields cdp sets). ---------

def _strict(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": required or []}


_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                     "maxLength": 253},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                    "metadata": _METADATA, "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


_LABEL_SELECTOR = {"type": "object", "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}, "additionalProperties": False}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}

CUSTOM_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): _resource("keda.sh/v1alpha1", "ScaledObject", _strict({
        "scaleTargetRef": _strict({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string", "minLength": 1},
                                   "envSourceContainerName": {"type": "string"}}, ["name"]),
        "pollingInterval": {"type": "integer", "minimum": 1},
        "cooldownPeriod": {"type": "integer", "minimum": 0},
        "initialCooldownPeriod": {"type": "integer", "minimum": 0},
        "idleReplicaCount": {"type": "integer", "minimum": 0},
        "minReplicaCount": {"type": "integer", "minimum": 0},
        "maxReplicaCount": {"type": "integer", "minimum": 1},
        "advanced": {"type": "object"},
        "fallback": {"type": "object"},
        "triggers": {"type": "array", "minItems": 1, "items": _strict({
            "type": {"type": "string", "minLength": 1},
            "name": {"type": "string"},
            "useCachedMetrics": {"type": "boolean"},
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            # Trigger metadata is map[string]string: a bare number is rejected by the API server.
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "authenticationRef": _strict({"name": {"type": "string", "minLength": 1},
                                          "kind": {"enum": ["TriggerAuthentication",
                                                            "ClusterTriggerAuthentication"]}}, ["name"]),
        }, ["type", "metadata"])},
    }, ["scaleTargetRef", "triggers"])),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _resource("keda.sh/v1alpha1", "TriggerAuthentication", _strict({
        "secretTargetRef": {"type": "array", "items": _strict({
            "parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}},
            ["parameter", "name", "key"])},
        "env": {"type": "array", "items": _strict({
            "parameter": {"type": "string"}, "name": {"type": "string"}, "containerName": {"type": "string"}},
            ["parameter", "name"])},
        "configMapTargetRef": {"type": "array"},
        "podIdentity": {"type": "object"},
        "hashiCorpVault": {"type": "object"},
    })),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource("monitoring.coreos.com/v1", "ServiceMonitor", _strict({
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": {"type": "object"},
        "jobLabel": {"type": "string"},
        "targetLabels": {"type": "array", "items": {"type": "string"}},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "sampleLimit": {"type": "integer"},
        "endpoints": {"type": "array", "minItems": 1, "items": _strict({
            "port": {"type": "string"},
            "targetPort": {"type": ["string", "integer"]},
            "path": {"type": "string", "pattern": "^/"},
            "scheme": {"enum": ["http", "https"]},
            "interval": _DURATION,
            "scrapeTimeout": _DURATION,
            "honorLabels": {"type": "boolean"},
            "relabelings": {"type": "array"},
            "metricRelabelings": {"type": "array"},
            "tlsConfig": {"type": "object"},
        })},
    }, ["selector", "endpoints"])),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): _resource("kafka.strimzi.io/v1beta2", "KafkaTopic", _strict({
        "topicName": {"type": "string", "pattern": r"^[a-zA-Z0-9._-]{1,249}$"},
        "partitions": {"type": "integer", "minimum": 1},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
        "config": {"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean", "number"]}},
    }, ["partitions", "replicas"])),
}


def validate_manifest(f: Failures, where: str, obj: dict[str, Any]) -> None:
    kind, api = obj.get("kind"), obj.get("apiVersion")
    name = f"{where}: {kind}/{obj.get('metadata', {}).get('name')}"
    custom = CUSTOM_SCHEMAS.get((api, kind))
    if custom is not None:
        errors = sorted(jsonschema.Draft202012Validator(custom).iter_errors(obj), key=str)
        f.check(not errors, f"{name} is a valid {kind}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors))
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            f.check(True, "")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            f.check(False, f"{name} against Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            f.check(False, f"{name}: no schema: {e.message}")


# --- Rendering ---------------------------------------------------------------------------------

def render(chart: helm.Chart, values: dict[str, Any] | None) -> list[dict[str, Any]]:
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source__", path)
                objects.append(doc)
    return objects


def strip_source(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "__source__"}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in by_kind(objects, kind) if o["metadata"]["name"] == name), None)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def topic_keys(table: Any, path: str = "") -> dict[str, str]:
    """Every topic a parsed TOML config names: its `*_topic` keys and the `topic` of destinations
    (dotted path, array items as [i])."""
    found: dict[str, str] = {}
    if isinstance(table, dict):
        for k, v in table.items():
            p = f"{path}.{k}" if path else k
            if (k == "topic" or k.endswith("_topic")) and isinstance(v, str):
                found[p] = v
            else:
                found.update(topic_keys(v, p))
    elif isinstance(table, list):
        for i, v in enumerate(table):
            found.update(topic_keys(v, f"{path}[{i}]"))
    return found


# --- The wiring ---------------------------------------------------------------------------------

def effective_config(cdp: str, config_text: str, env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """The config the binary runs with, given the rendered file and the container's environment."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdp.toml"
        path.write_text(config_text)
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, **env}
        out = subprocess.run([cdp, "--data", str(Path(tmp) / "data"), "--config", str(path), "config"],
                             capture_output=True, text=True, env=run_env, timeout=120)
    if out.returncode != 0:
        return None, out.stderr.strip() or out.stdout.strip()
    return tomllib.loads(out.stdout), ""


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the binary would see it; Secret values are stand-ins."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = (WRITE_KEYS_STANDIN if e["name"] == "CDP_COLLECT__WRITE_KEYS"
                              else f"from-secret-{ref['name']}-{ref['key']}")
    return env


def check_variant(f: Failures, label: str, objects: list[dict[str, Any]], values: dict[str, Any],
                  topics: dict[str, str], cdp: str | None) -> None:
    for o in objects:
        validate_manifest(f, label, strip_source(o))
        name = o["metadata"]["name"]
        limit = 63 if o["kind"] in ("Service", "StatefulSet", "Deployment") else 253
        f.check(len(name) <= limit and re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) is not None,
                f"{label}: {o['kind']} name {name!r} is a valid Kubernetes name")
    f.check(not by_kind(objects, "Secret"), f"{label}: the chart creates no Secret (it references existing ones)")

    configmaps = [c for c in by_kind(objects, "ConfigMap") if "cdp.toml" in c.get("data", {})]
    dashboards = [c for c in by_kind(objects, "ConfigMap") if "cdp.json" in c.get("data", {})]
    if values["grafanaDashboard"]["enabled"]:
        if f.check(len(dashboards) == 1, f"{label}: one Grafana dashboard ConfigMap"):
            d = dashboards[0]
            f.check(json.loads(d["data"]["cdp.json"]).get("panels") is not None,
                    f"{label}: the dashboard ConfigMap holds the dashboard JSON")
            f.check(selects(values["grafanaDashboard"]["labels"], d["metadata"]["labels"]),
                    f"{label}: the dashboard ConfigMap has the sidecar's labels")
    else:
        f.check(not dashboards, f"{label}: no dashboard ConfigMap when disabled")
    if not f.check(len(configmaps) == 1, f"{label}: one ConfigMap with cdp.toml"):
        return
    configmap = configmaps[0]
    config_text = configmap["data"]["cdp.toml"]
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as e:
        f.check(False, f"{label}: the rendered cdp.toml is TOML: {e}")
        return
    f.check(config.get("bus", {}).get("backend") == "kafka", f"{label}: the config runs on the Kafka bus")
    f.check(not re.search(r"(?i)password|secret\s*=", config_text),
            f"{label}: no password or secret in the ConfigMap")
    rendered_topics = topic_keys(config)
    f.check(bool(rendered_topics), f"{label}: the config names its topics")
    for key, name in sorted(rendered_topics.items()):
        if key in topics:
            f.check(name == topics[key], f"{label}: config {key} = {name!r}, the binary's default is {topics[key]!r}")
        else:
            f.check(name in topics.values(),
                    f"{label}: config {key} = {name!r} is one of the binary's default topics")

    stages = dict(STAGES)
    if values[COLLECTOR]["enabled"]:
        stages[COLLECTOR] = "collect"
    else:
        f.check(not [o for o in objects if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == COLLECTOR],
                f"{label}: nothing of the collector when collector.enabled is false")
    workloads = {}
    for stage in stages:
        kind = "StatefulSet" if stage in STATEFUL else "Deployment"
        found = [o for o in by_kind(objects, kind)
                 if o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == stage]
        if f.check(len(found) == 1, f"{label}: one {kind} runs the {stage}"):
            workloads[stage] = found[0]
    f.check(len(by_kind(objects, "Deployment")) + len(by_kind(objects, "StatefulSet")) == len(stages),
            f"{label}: no workload beyond {', '.join(stages)}")

    services = by_kind(objects, "Service")
    for stage, w in workloads.items():
        check_workload(f, f"{label}: {stage}", stage, stages[stage], w, configmap, config_text, values, cdp)
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        f.check(selects(w["spec"]["selector"]["matchLabels"], pod_labels),
                f"{label}: {stage} selector matches its pod labels")
        stage_services = [s for s in services if selects(s["spec"].get("selector", {}), pod_labels)]
        f.check(len(stage_services) == 1, f"{label}: one Service selects the {stage} pods")
        for s in stage_services:
            ports = [p.get("targetPort") for p in s["spec"]["ports"]]
            f.check("http" in ports, f"{label}: Service {s['metadata']['name']} targets the http port")
        pdbs = [p for p in by_kind(objects, "PodDisruptionBudget")
                if selects(p["spec"]["selector"]["matchLabels"], pod_labels)]
        if values[stage]["pdb"]["enabled"]:
            f.check(len(pdbs) == 1, f"{label}: one PodDisruptionBudget covers the {stage} pods")
        if stage in STATEFUL:
            check_stateful(f, label, stage, w, stage_services, objects, values)
        elif stage == COLLECTOR:
            check_collector(f, label, w, objects, values)
        else:
            check_autoscaling(f, label, stage, w, objects, values)
    check_autoscaler_targets(f, label, objects, workloads)

    check_monitoring(f, label, objects, services, values, len(workloads))
    check_network_policy(f, label, objects, workloads, values)


def check_workload(f: Failures, label: str, stage: str, subcommand: str, w: dict[str, Any],
                   configmap: dict[str, Any], config_text: str, values: dict[str, Any], cdp: str | None) -> None:
    pod = w["spec"]["template"]["spec"]
    containers = pod["containers"]
    if not f.check(len(containers) == 1, f"{label}: one container"):
        return
    c = containers[0]
    args = c.get("command", []) + c.get("args", [])
    f.check(args[-1:] == [subcommand], f"{label}: runs `cdp {subcommand}` (args {args})")

    def flag(name: str) -> str | None:
        return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None

    data_path, config_path = flag("--data"), flag("--config")
    f.check(flag("--log-format") == "json", f"{label}: logs JSON lines")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_mount = next((m for p, m in mounts.items() if config_path and config_path.startswith(p.rstrip("/") + "/")), None)
    f.check(config_mount is not None and config_mount.get("readOnly") is True
            and volumes.get(config_mount["name"], {}).get("configMap", {}).get("name") == configmap["metadata"]["name"],
            f"{label}: --config {config_path} is the ConfigMap, mounted read-only")
    f.check(data_path in mounts, f"{label}: --data {data_path} is a mounted volume")
    tmp = mounts.get("/tmp")
    f.check(tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}), f"{label}: /tmp is a writable emptyDir")
    f.check("checksum/config" in w["spec"]["template"]["metadata"].get("annotations", {}),
            f"{label}: pods roll when the config changes (checksum annotation)")

    # Non-root, read-only root filesystem, nothing to escalate.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    f.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0 and csc.get("runAsUser", 1) != 0,
            f"{label}: runs as non-root")
    f.check(csc.get("readOnlyRootFilesystem") is True, f"{label}: root filesystem is read-only")
    f.check(csc.get("allowPrivilegeEscalation") is False and "ALL" in csc.get("capabilities", {}).get("drop", []),
            f"{label}: no privilege escalation, all capabilities dropped")
    f.check(pod.get("automountServiceAccountToken") is False, f"{label}: no API token mounted")
    f.check(isinstance(pod.get("terminationGracePeriodSeconds"), int)
            and pod["terminationGracePeriodSeconds"] == values[stage]["terminationGracePeriodSeconds"],
            f"{label}: terminationGracePeriodSeconds from values")
    requests = c.get("resources", {}).get("requests", {})
    f.check("cpu" in requests and "memory" in requests, f"{label}: requests CPU and memory")
    f.check("memory" in c.get("resources", {}).get("limits", {}), f"{label}: has a memory limit")

    # Probes: the routes the binary serves, on the port it listens on.
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, route in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        port = ports.get(get.get("port"), get.get("port"))
        f.check(get.get("path") == route and port == values["http"]["port"],
                f"{label}: {probe} is GET {route} on port {values['http']['port']} (got {get.get('path')} on {port})")

    env = container_env(c)
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            f.check(bool(ref.get("name")) and bool(ref.get("key")), f"{label}: env {e['name']} names its Secret and key")
    section, variable = LISTEN.get(stage, ("http", "CDP_HTTP__LISTEN"))
    listen = env.get(variable, "")
    if cdp is None:
        f.check(listen == f"0.0.0.0:{values['http']['port']}",
                f"{label}: {variable}={listen!r} binds the probe port on every interface")
        return
    effective, error = effective_config(cdp, config_text, env)
    if not f.check(effective is not None, f"{label}: the binary accepts the rendered config and environment: {error}"):
        return
    if stage == COLLECTOR:
        keys = effective.get("collect", {}).get("write_keys", [])
        f.check([k.get("tenant") for k in keys] == ["from-secret"],
                f"{label}: the write keys reach collect.write_keys from the Secret (got {keys})")
    listen = effective.get(section, {}).get("listen", "")
    host, _, port = listen.rpartition(":")
    f.check(host in ("0.0.0.0", "[::]") and port == str(values["http"]["port"]),
            f"{label}: the binary listens on {listen!r}: every interface, the probe port {values['http']['port']}")
    f.check(effective.get("bus", {}).get("backend") == "kafka", f"{label}: the binary runs on the Kafka bus")
    if values["kafka"]["sasl"]["existingSecret"]:
        props = effective.get("bus", {}).get("kafka", {}).get("properties", {})
        f.check(props.get("sasl.password", "").startswith("from-secret-"),
                f"{label}: the SASL password reaches librdkafka from the Secret")


def check_stateful(f: Failures, label: str, stage: str, sts: dict[str, Any], services: list[dict[str, Any]],
                   objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """A stage whose state must survive its pod: a PVC at --data, one replica, no autoscaler."""
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("command", []) + c.get("args", [])
    data_path = args[args.index("--data") + 1]
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == data_path), None)
    claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    pod_volumes = {v["name"]: v for v in pod.get("volumes", [])}
    f.check(mount is not None and mount["name"] in claims and mount["name"] not in pod_volumes,
            f"{label}: the {stage}'s --data {data_path} is its PersistentVolumeClaim, not a pod volume")
    f.check(not any("emptyDir" in pod_volumes.get(m["name"], {}) for m in c.get("volumeMounts", [])
                    if m["mountPath"] == data_path or m["mountPath"].startswith(data_path.rstrip("/") + "/")),
            f"{label}: no emptyDir holds the {stage}'s data")
    persistence = values[stage]["persistence"]
    for claim in claims.values():
        f.check(claim["spec"]["resources"]["requests"]["storage"] == persistence["size"]
                and claim["spec"]["accessModes"] == persistence["accessModes"]
                and claim["spec"].get("storageClassName", "") == persistence["storageClass"],
                f"{label}: the {stage}'s volume has the size, access modes and StorageClass from values")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    f.check(len(headless) == 1 and headless[0]["metadata"]["name"] == spec.get("serviceName"),
            f"{label}: the {stage}'s serviceName is its headless Service")
    f.check(spec.get("replicas") == values[stage]["replicas"] and spec.get("replicas", 0) <= 1,
            f"{label}: one {stage} pod owns the stage's state (replicas {spec.get('replicas')})")
    f.check(spec.get("podManagementPolicy") == "OrderedReady"
            and spec.get("updateStrategy", {}).get("type") == "RollingUpdate",
            f"{label}: the {stage}'s pod is replaced only after the old one has exited (one RocksDB writer)")
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    wanted = "Retain" if persistence["retainOnDelete"] else "Delete"
    f.check(retention.get("whenDeleted") == wanted and retention.get("whenScaled") == wanted,
            f"{label}: the {stage}'s volume retention follows values ({wanted})")
    name = sts["metadata"]["name"]
    targeting = [f"{o['kind']}/{o['metadata']['name']}" for o in objects
                 if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
                 and o["spec"]["scaleTargetRef"]["name"] == name]
    f.check(not targeting, f"{label}: no autoscaler targets the {stage} ({targeting})")


def check_autoscaler_targets(f: Failures, label: str, objects: list[dict[str, Any]],
                             workloads: dict[str, dict[str, Any]]) -> None:
    """Every autoscaler scales a stateless Deployment of the release, never a stateful stage."""
    scalable = {(w["kind"], w["metadata"]["name"]) for stage, w in workloads.items() if stage not in STATEFUL}
    for o in objects:
        if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            ref = o["spec"]["scaleTargetRef"]
            f.check((ref.get("kind"), ref.get("name")) in scalable,
                    f"{label}: {o['kind']}/{o['metadata']['name']} scales a stateless Deployment "
                    f"({ref.get('kind')}/{ref.get('name')} is not one of {sorted(scalable)})")


def check_autoscaling(f: Failures, label: str, stage: str, deployment: dict[str, Any],
                      objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    name = deployment["metadata"]["name"]
    scaling = values[stage]["autoscaling"]
    hpas = [h for h in by_kind(objects, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
    scaled = [s for s in by_kind(objects, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    mode = values["autoscaling"]["mode"] if scaling["enabled"] else "none"
    f.check(len(hpas) == (mode == "hpa") and len(scaled) == (mode == "keda"),
            f"{label}: {stage} has exactly the autoscaler of mode {mode!r} ({len(hpas)} HPA, {len(scaled)} ScaledObject)")
    f.check(("replicas" in deployment["spec"]) == (mode == "none"),
            f"{label}: {stage} Deployment leaves replicas to its autoscaler")
    for h in hpas:
        f.check(h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
                and h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"] <= values["kafka"]["partitions"],
                f"{label}: {stage} HPA scales the Deployment within the partitions")
    for s in scaled:
        triggers = s["spec"]["triggers"]
        group = values["config"][stage]["group"]
        f.check(len(triggers) == 1 and triggers[0]["type"] == "kafka"
                and triggers[0]["metadata"].get("consumerGroup") == group
                and triggers[0]["metadata"].get("bootstrapServers") == values["kafka"]["brokers"],
                f"{label}: {stage} ScaledObject follows the lag of consumer group {group!r}")
        auth = triggers[0].get("authenticationRef", {}).get("name")
        if auth is not None:
            f.check(named(objects, "TriggerAuthentication", auth) is not None,
                    f"{label}: {stage} ScaledObject's TriggerAuthentication {auth!r} exists")
        if values["kafka"]["sasl"]["existingSecret"]:
            f.check(auth is not None and "sasl" in triggers[0]["metadata"],
                    f"{label}: {stage} ScaledObject authenticates to Kafka like the pods do")


def check_monitoring(f: Failures, label: str, objects: list[dict[str, Any]], services: list[dict[str, Any]],
                     values: dict[str, Any], workloads: int) -> None:
    monitors = by_kind(objects, "ServiceMonitor")
    if not f.check(len(monitors) == (1 if values["serviceMonitor"]["enabled"] else 0),
                   f"{label}: ServiceMonitor rendered only when enabled"):
        return
    for m in monitors:
        selected = [s for s in services if selects(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        f.check(len(selected) == workloads, f"{label}: the ServiceMonitor selects the Services of all stages")
        for e in m["spec"]["endpoints"]:
            f.check(e.get("path") == "/metrics" and all(
                any(p.get("name") == e.get("port") for p in s["spec"]["ports"]) for s in selected),
                f"{label}: the ServiceMonitor scrapes /metrics on a port every Service has")


def check_collector(f: Failures, label: str, deployment: dict[str, Any], objects: list[dict[str, Any]],
                    values: dict[str, Any]) -> None:
    """The collector: a CPU autoscaler in either mode (it consumes nothing, so there is no lag to
    follow), and, with the NetworkPolicy on, its port open to its clients."""
    name = deployment["metadata"]["name"]
    scaling = values[COLLECTOR]["autoscaling"]
    hpas = [h for h in by_kind(objects, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
    scaled = [s for s in by_kind(objects, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == name]
    f.check(len(hpas) == (1 if scaling["enabled"] else 0) and not scaled,
            f"{label}: the collector has a CPU HPA exactly when collector.autoscaling.enabled ({len(hpas)} HPA, {len(scaled)} ScaledObject)")
    f.check(("replicas" in deployment["spec"]) != scaling["enabled"],
            f"{label}: the collector Deployment leaves replicas to its autoscaler")
    for h in hpas:
        f.check(h["spec"]["minReplicas"] == scaling["minReplicas"] and h["spec"]["maxReplicas"] == scaling["maxReplicas"]
                and h["spec"]["metrics"][0]["resource"]["name"] == "cpu",
                f"{label}: the collector HPA scales on CPU within collector.autoscaling")
    if values["networkPolicy"]["enabled"]:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        # The collector's own policies (the release-wide one selects every stage's pods).
        own = [p for p in by_kind(objects, "NetworkPolicy")
               if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
               and p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == COLLECTOR]
        open_to = [rule.get("from") for p in own for rule in p["spec"].get("ingress", [])
                   if any(port.get("port") == "http" for port in rule.get("ports", []))]
        wanted = values[COLLECTOR]["ingressFrom"] or None
        f.check(open_to == [wanted],
                f"{label}: a collector NetworkPolicy lets its clients ({wanted or 'anyone'}) reach the http port (got {open_to})")


def check_network_policy(f: Failures, label: str, objects: list[dict[str, Any]],
                         workloads: dict[str, dict[str, Any]], values: dict[str, Any]) -> None:
    policies = by_kind(objects, "NetworkPolicy")
    if not values["networkPolicy"]["enabled"]:
        f.check(not policies, f"{label}: no NetworkPolicy when disabled")
        return
    for stage, w in workloads.items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        applying = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
        ingress_ports = [port.get("port") for p in applying for rule in p["spec"].get("ingress", [])
                         for port in rule.get("ports", [])]
        egress_ports = {port.get("port") for p in applying for rule in p["spec"].get("egress", [])
                        for port in rule.get("ports", [])}
        f.check(bool(applying) and "http" in ingress_ports,
                f"{label}: a NetworkPolicy lets the {stage} HTTP port be reached")
        f.check(53 in egress_ports and set(values["networkPolicy"]["kafka"]["ports"]) <= egress_ports,
                f"{label}: the {stage} pods may reach DNS and the Kafka brokers")
        # Webhook egress is activation's alone (unless the Kafka or extra rules open that port anyway).
        webhooks = values["networkPolicy"]["webhooks"]
        shared = set(values["networkPolicy"]["kafka"]["ports"]) | {
            port.get("port") for rule in values["networkPolicy"].get("extraEgress", []) for port in rule.get("ports", [])}
        if webhooks["port"] not in shared:
            wanted = webhooks["enabled"] and stage == "activation"
            f.check((webhooks["port"] in egress_ports) == wanted,
                    f"{label}: the {stage} pods {'may' if wanted else 'may not'} reach webhooks on port {webhooks['port']}")


# --- Strimzi topics ---------------------------------------------------------------------------

def check_topics(f: Failures, topics: dict[str, str], chart_values: dict[str, Any]) -> None:
    docs = [d for d in yaml.safe_load_all(TOPICS.read_text()) if d]
    for d in docs:
        validate_manifest(f, "strimzi", d)
    names = {}
    for d in docs:
        name = d["spec"].get("topicName", d["metadata"]["name"])
        f.check(name not in names, f"strimzi: topic {name} is declared once")
        names[name] = d
    wanted = set(topics.values())
    f.check(set(names) == wanted,
            f"strimzi: the topics are the binary's default topics (missing {sorted(wanted - set(names))}, "
            f"extra {sorted(set(names) - wanted)})")
    for name, d in names.items():
        spec = d["spec"]
        f.check(spec["partitions"] == chart_values["kafka"]["partitions"],
                f"strimzi: {name} has kafka.partitions ({chart_values['kafka']['partitions']}) partitions")
        f.check(spec["replicas"] == chart_values["kafka"]["replicationFactor"],
                f"strimzi: {name} has kafka.replicationFactor replicas")
        f.check(d["metadata"].get("labels", {}).get("strimzi.io/cluster"), f"strimzi: {name} names its Kafka cluster")
        f.check(spec.get("config", {}).get("cleanup.policy") in ("delete", "compact", "compact,delete"),
                f"strimzi: {name} states its cleanup.policy")

    def role(suffix: str) -> set[str]:
        return {n for k, n in topics.items() if k.endswith("." + suffix)}

    # The resolver rebuilds a fresh volume by replaying its inputs from the start.
    for name in role("signals_topic") | role("commands_topic"):
        config = names.get(name, {}).get("spec", {}).get("config", {})
        f.check(str(config.get("retention.ms")) == "-1" and config.get("cleanup.policy") == "delete",
                f"strimzi: {name} keeps every record (retention.ms -1, not compacted)")
    for name in role("membership_topic"):
        config = names.get(name, {}).get("spec", {}).get("config", {})
        f.check(config.get("cleanup.policy") == "compact", f"strimzi: {name} is compacted")
    f.check(bool(role("signals_topic")) and bool(role("membership_topic")),
            "strimzi: the binary names a signals and a membership topic")


# --- The image -----------------------------------------------------------------------------------

def check_dockerfile(f: Failures, objects: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """The image the chart runs: multi-stage, slim non-root runtime, the binary where the chart
    calls it. (No Docker engine here to build it.)"""
    lines = [l.strip() for l in DOCKERFILE.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    f.check(len(stages) >= 2, "Dockerfile: multi-stage")
    if not stages:
        return
    runtime = lines[stages[-1]:]
    base = runtime[0].split()[1]
    f.check(re.match(r"^debian:[a-z]+-slim$", base) is not None, f"Dockerfile: runtime image {base} is Debian slim")
    f.check(not any("cargo" in l for l in runtime), "Dockerfile: no toolchain in the runtime image")
    users = [l.split()[1] for l in runtime if l.upper().startswith("USER ")]
    uid, _, gid = (users[-1] if users else "").partition(":")
    f.check(uid.isdigit() and int(uid) != 0 and int(uid) == values["podSecurityContext"]["runAsUser"]
            and (not gid or int(gid) == values["podSecurityContext"]["runAsGroup"]),
            f"Dockerfile: runs as numeric non-root user {users[-1:]} = the chart's runAsUser/runAsGroup")
    copies = [l.split()[-1] for l in runtime if l.upper().startswith("COPY --FROM=")]
    commands = {o["spec"]["template"]["spec"]["containers"][0]["command"][0]
                for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
    f.check(len(commands) == 1 and commands <= set(copies),
            f"Dockerfile: the binary is copied to {copies}, where the chart runs it ({sorted(commands)})")


# --- The TOML the ConfigMap holds ---------------------------------------------------------------

# Values whose TOML is easy to get wrong: Helm hands every number over as a float, and strings
# may hold quotes, backslashes, newlines and the characters JSON escapes.
TRICKY_CONFIG: dict[str, Any] = {
    "ingest": {"default_tenant": "it's \"quoted\" \\ <&>", "batch_size": 1000, "max_record_bytes": 10**12},
    "resolver": {"policy": {"merge_threshold": 0.85, "max_per_kind": {"user_id": 1}}},
    "activation": {"cohorts": [
        {"key": "vip", "description": "two\nlines\tand a tab", "priority": 3, "identifiers": ["crm_id"],
         "expression": 'profile.traits["tier"] == "gold" && profile.counts["Order Completed"].total >= 10'},
        {"key": "url_like", "expression": "profile.traits.site == 'https://example.com/?a=1&b=2'"},
    ]},
}


def check_toml_rendering(f: Failures, chart: helm.Chart) -> None:
    rendered = chart.render({"config": TRICKY_CONFIG}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    text = next(yaml.safe_load(t)["data"]["cdp.toml"] for p, t in rendered.items() if p.endswith("/configmap.yaml"))
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        f.check(False, f"tricky values render to valid TOML: {e}\n{text}")
        return
    for section, wanted in TRICKY_CONFIG.items():
        got = {k: parsed.get(section, {}).get(k) for k in wanted}
        f.check(got == wanted, f"[{section}] reads back as given: {got} != {wanted}")
    f.check(isinstance(parsed["ingest"]["batch_size"], int), "whole numbers are TOML integers, not floats")


# --- values.schema.json ------------------------------------------------------------------------

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"ingest": {"replicas": "two"}}, "/ingest/replicas"),
    ({"resolver": {"replicas": 2}}, "/resolver/replicas"),
    ({"activation": {"replicas": 2}}, "/activation/replicas"),
    # Activation does not autoscale and keeps its state on a claim, not on a scratch emptyDir.
    ({"activation": {"autoscaling": {"enabled": True, "maxReplicas": 6}}}, "additional properties 'autoscaling'"),
    ({"activation": {"dataSizeLimit": "2Gi"}}, "additional properties 'dataSizeLimit'"),
    ({"activation": {"persistence": {"accessModes": []}}}, "/activation/persistence/accessModes"),
    ({"autoscaling": {"mode": "cpu"}}, "/autoscaling/mode"),
    ({"http": {"port": "8080"}}, "/http/port"),
    ({"kafka": {"brokers": "kafka"}}, "/kafka/brokers"),
    ({"kafka": {"properties": {"sasl.password": "hunter2"}}}, "sasl.password"),
    ({"containerSecurityContext": {"readOnlyRootFilesystem": False}}, "/containerSecurityContext/readOnlyRootFilesystem"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"config": {"ingest": {"signals_topic": "bad topic"}}}, "/config/ingest/signals_topic"),
    ({"resolver": {"persistence": {"size": "lots"}}}, "/resolver/persistence/size"),
    ({"ingest": {"replicaCount": 3}}, "replicaCount"),
    ({"ingest": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "minReplicas (5) is above maxReplicas (3)"),
    ({"ingest": {"autoscaling": {"maxReplicas": 40}}}, "maxReplicas (40) is above kafka.partitions (12)"),
    ({"kafka": {"sasl": {"existingSecret": "kafka-user"}}}, "neither kafka.sasl.username nor kafka.sasl.usernameKey"),
    ({"config": {"activation": {"destinations": [{"key": "crm", "kind": "webhook", "secret": "whsec_x"}]}}},
     "/config/activation/destinations/0/secret"),
    ({"activation": {"secretEnv": [{"name": "CRM SECRET", "secretName": "cdp", "key": "crm"}]}},
     "/activation/secretEnv/0/name"),
    ({"collector": {"enabled": True}}, "/collector/writeKeys/existingSecret"),
    ({"collector": {"autoscaling": {"lagThreshold": 100}}}, "additional properties 'lagThreshold'"),
    ({"config": {"collect": {"write_keys": []}}}, "additional properties 'write_keys'"),
]


# Rejected by the templates themselves, so also when the schema is skipped
# (helm install --skip-schema-validation).
BAD_VALUES_WITHOUT_SCHEMA: list[tuple[dict[str, Any], str]] = [
    ({"resolver": {"replicas": 2}}, "resolver.replicas (2) is above 1"),
    ({"activation": {"replicas": 2}}, "activation.replicas (2) is above 1"),
    ({"collector": {"enabled": True}}, "collector.writeKeys.existingSecret is required"),
]


def expect_rejected(f: Failures, chart: helm.Chart, bad: dict[str, Any], message: str, how: str) -> None:
    try:
        chart.render(bad, name=RELEASE, namespace=NAMESPACE, is_install=True)
        f.check(False, f"values {bad} are rejected at install{how}")
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        f.check(message in str(e), f"values {bad} are rejected{how} naming {message!r}: {e}")


def check_rejections(f: Failures, chart: helm.Chart) -> None:
    for bad, message in BAD_VALUES:
        expect_rejected(f, chart, bad, message, "")
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / CHART.name
        shutil.copytree(CHART, copy_dir)
        (copy_dir / "values.schema.json").unlink()
        with helm.Chart.load(str(copy_dir)) as unchecked:
            f.check(unchecked.schema is None, "the chart copy without values.schema.json has no schema")
            for bad, message in BAD_VALUES_WITHOUT_SCHEMA:
                expect_rejected(f, unchecked, bad, message, " without the schema")


# --- main --------------------------------------------------------------------------------------

def lint(f: Failures, label: str, values: dict[str, Any] | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    # Severity 1 is informational (e.g. "icon is recommended"); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    f.check(not problems, f"{label}: helm lint --strict: {problems}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", action="append", default=[], metavar="SECTION.KEY=NAME",
                        help="a default topic of the binary (`cdp config --print-default`), once per *_topic or topic key")
    parser.add_argument("--cdp", help="the cdp binary: checks that it accepts the rendered config and environment")
    args = parser.parse_args(argv)
    topics = {}
    for item in args.topic:
        key, sep, name = item.partition("=")
        if not sep or not re.search(r"(^|[._])topic$", key) or not name:
            parser.error(f"--topic {item!r} is not SECTION.KEY_topic=NAME")
        topics[key] = name
    if not topics:
        parser.error("give the binary's default topics with --topic")

    f = Failures()
    with helm.Chart.load(str(CHART)) as chart:
        defaults = chart.values
        production = helm.values_from_yaml(PRODUCTION.read_text())
        other = {"hpa": "keda", "keda": "hpa"}
        variants = {
            "default": {},
            f"default+{other[defaults['autoscaling']['mode']]}":
                {"autoscaling": {"mode": other[defaults["autoscaling"]["mode"]]}},
            "production": production,
            f"production+{other[production['autoscaling']['mode']]}":
                deep_merge(production, {"autoscaling": {"mode": other[production["autoscaling"]["mode"]]}}),
        }
        modes = set()
        for label, overrides in variants.items():
            lint(f, label, overrides or None)
            values = chart.merge_values(overrides)
            modes.add(values["autoscaling"]["mode"])
            try:
                objects = render(chart, overrides or None)
            except helm.HelmError as e:
                f.check(False, f"{label}: renders: {e}")
                continue
            kinds = sorted({o["kind"] for o in objects})
            print(f"{label}: {len(objects)} manifests ({', '.join(kinds)})", flush=True)
            check_variant(f, label, objects, values, topics, args.cdp)
            if label == "default":
                check_dockerfile(f, objects, values)
        f.check(modes == {"hpa", "keda"}, "both autoscaling modes are checked")
        check_toml_rendering(f, chart)
        check_rejections(f, chart)
        check_topics(f, topics, defaults)

    print(f"check-chart: {f.passed} passed, {len(f.failed)} failed")
    return 1 if f.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
