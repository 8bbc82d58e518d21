"""Checks deploy/ offline: every overlay, the NATS config, the images, Prometheus and Grafana files.

Run by scripts/validate-deploy (which provides the tools); each step prints one line with its time.

1. Every overlay under deploy/k8s/overlays renders (`kubectl kustomize`) and passes
   `kubernetes-validate --strict` for each Kubernetes version in K8S_VERSIONS.
2. What a schema cannot see, on the rendered objects: workload selectors match their pod labels
   and a PodDisruptionBudget covers each ELK and NATS workload; probes and Services name declared ports; every
   ConfigMap and Secret referenced exists (or is created by the operator, EXTERNAL_SECRETS); every
   container is non-root with a read-only root filesystem, no privilege escalation and no
   capabilities; every ELK process gets the environment contract (ELK_MEMBER_ID from the pod
   name, ELK_METRICS_LISTEN on its `metrics` port, the elk-env ConfigMap, no service links);
   a worker's pod grace period covers its drain (ELK_SHUTDOWN_GRACE).
3. Images: each one a manifest names is produced by scripts/build-images (with its tag) or pinned
   in deploy/k8s/third-party-images.txt; no `latest` or untagged image anywhere; the kind overlay
   never pulls the project's images.
4. NATS: the rendered config files pass `nats-server -t`; the cluster routes name exactly the
   StatefulSet's pods through its headless Service on the cluster port (none for one server);
   fsync on every write (`sync_interval: always`); ELK_REPLICAS equals the number of servers.
5. Prometheus: `promtool check config` on the rendered config and rule files (see
   check_prometheus_config), `promtool check rules`, `promtool test rules` (rules/*.test.yml). Grafana: provisioning files and dashboards parse, and dashboards use
   only provisioned datasource uids.
6. Metric names: every `elk_*` metric an alert rule or a dashboard query uses is documented in
   docs/observability.md (the integration test observability.rs checks that those documented
   are exactly those the processes serve), and every dashboard query parses (`promtool check
   rules` on them as recording rules).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(REPO, "deploy", "k8s")
OBSERVABILITY = os.path.join(K8S, "base", "observability")
K8S_VERSIONS = ["1.33.0", "1.35.0"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
ELK_COMPONENTS = {"control-plane", "worker"}
METRICS_PORT = 9464
# Secrets the operator creates before applying an overlay (docs/deploy.md).
EXTERNAL_SECRETS = {"prod": {"grafana-admin"}}


class Invalid(Exception):
    """A deploy file is wrong; the message says which and why."""


def tool(name):
    return os.path.join(os.environ["DEPLOY_TOOLS_BIN"], name)


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise Invalid(f"`{' '.join(command)}` failed:\n{result.stdout}{result.stderr}".rstrip())
    return result.stdout


def overlays():
    found = sorted(os.path.basename(d) for d in glob.glob(os.path.join(K8S, "overlays", "*")))
    if not found:
        raise Invalid("no overlays under deploy/k8s/overlays")
    return found


# --- 1. render and schema-validate ------------------------------------------------------------


def render(overlay, workdir):
    output = run([tool("kubectl"), "kustomize", os.path.join(K8S, "overlays", overlay)])
    path = os.path.join(workdir, f"{overlay}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(output)
    return path, [doc for doc in yaml.safe_load_all(output) if doc]


def schema_validate(paths):
    for version in K8S_VERSIONS:
        run([tool("kubernetes-validate"), "--quiet", "--strict", "-k", version, *paths])


# --- 2. semantics -------------------------------------------------------------------------------


def by_kind(docs, kind):
    return [doc for doc in docs if doc["kind"] == kind]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def containers(workload):
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector, labels):
    """A LabelSelector (matchLabels and matchExpressions In/NotIn/Exists) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def check_workloads(overlay, docs):
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    external = EXTERNAL_SECRETS.get(overlay, set())
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for workload in (doc for doc in docs if doc["kind"] in WORKLOAD_KINDS):
        where = f"{overlay}: {workload['kind']} {workload['metadata']['name']}"
        labels = workload["spec"]["template"]["metadata"].get("labels", {})
        if not selects(workload["spec"]["selector"], labels):
            raise Invalid(f"{where}: selector does not match the pod template labels")
        # The replicated parts; the single-instance UIs (Jaeger, Prometheus, Grafana) have none.
        if labels.get("app.kubernetes.io/component") in ELK_COMPONENTS | {"nats"} and not any(
            selects(pdb["spec"]["selector"], labels) for pdb in pdbs
        ):
            raise Invalid(f"{where}: no PodDisruptionBudget selects its pods")
        spec = pod_spec(workload)
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            raise Invalid(f"{where}: the pod does not set runAsNonRoot")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and ("ConfigMap", volume["configMap"]["name"]) not in names:
                raise Invalid(f"{where}: volume {volume['name']} names a missing ConfigMap")
            if "secret" in volume and volume["secret"]["secretName"] not in external and (
                "Secret", volume["secret"]["secretName"]) not in names:
                raise Invalid(f"{where}: volume {volume['name']} names a missing Secret")
        for container in containers(workload):
            check_container(where, container, names, external)
            if labels.get("app.kubernetes.io/component") in ELK_COMPONENTS:
                check_elk_contract(where, spec, container)
            if labels.get("app.kubernetes.io/component") == "worker":
                check_drain(where, spec, container)


def check_container(where, container, names, external):
    where = f"{where} container {container['name']}"
    context = container.get("securityContext", {})
    if context.get("readOnlyRootFilesystem") is not True:
        raise Invalid(f"{where}: root filesystem not read-only")
    if context.get("allowPrivilegeEscalation") is not False:
        raise Invalid(f"{where}: allowPrivilegeEscalation is not false")
    if context.get("capabilities", {}).get("drop") != ["ALL"]:
        raise Invalid(f"{where}: capabilities are not dropped (drop: [ALL])")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = container.get(probe_name, {}).get("httpGet", {}).get("port")
        if port is not None and port not in ports and port not in ports.values():
            raise Invalid(f"{where}: {probe_name} uses undeclared port {port!r}")
    if "resources" not in container or "limits" not in container["resources"]:
        raise Invalid(f"{where}: no resource requests and limits")
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref and ("ConfigMap", ref) not in names:
            raise Invalid(f"{where}: envFrom names missing ConfigMap {ref}")
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        if ref and ref not in external and ("Secret", ref) not in names:
            raise Invalid(f"{where}: {variable['name']} names missing Secret {ref}")


def check_elk_contract(where, spec, container):
    where = f"{where} container {container['name']}"
    env = {v["name"]: v for v in container.get("env", [])}
    member = env.get("ELK_MEMBER_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if member.get("fieldPath") != "metadata.name":
        raise Invalid(f"{where}: ELK_MEMBER_ID must come from the pod name (metadata.name)")
    if env.get("ELK_METRICS_LISTEN", {}).get("value") != f"0.0.0.0:{METRICS_PORT}":
        raise Invalid(f"{where}: ELK_METRICS_LISTEN must be 0.0.0.0:{METRICS_PORT}")
    if {"name": "metrics", "containerPort": METRICS_PORT} not in container.get("ports", []):
        raise Invalid(f"{where}: no container port `metrics` {METRICS_PORT} (Prometheus scrapes it)")
    if not any(s.get("configMapRef", {}).get("name", "").startswith("elk-env")
               for s in container.get("envFrom", [])):
        raise Invalid(f"{where}: does not read the elk-env ConfigMap")
    # Service links would inject ELK_<SERVICE>_PORT... variables among the configuration.
    if spec.get("enableServiceLinks") is not False:
        raise Invalid(f"{where}: enableServiceLinks must be false")


def seconds(duration):
    """`30s`, `500ms`, `2m` (the forms the worker's ELK_SHUTDOWN_GRACE takes) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", duration.strip())
    if not match:
        raise Invalid(f"cannot read the duration {duration!r}")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def check_drain(where, spec, container):
    """A worker drains within ELK_SHUTDOWN_GRACE; the pod's grace period must let it finish
    (more than the drain) without idling long after it (at most 30 s more)."""
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    if env.get("ELK_SHUTDOWN_GRACE") is None:
        raise Invalid(f"{where}: a worker needs ELK_SHUTDOWN_GRACE (its drain on SIGTERM)")
    drain = seconds(env["ELK_SHUTDOWN_GRACE"])
    period = spec.get("terminationGracePeriodSeconds", 30)
    if not drain < period <= drain + 30:
        raise Invalid(f"{where}: terminationGracePeriodSeconds {period} does not match the drain "
                      f"(ELK_SHUTDOWN_GRACE {env['ELK_SHUTDOWN_GRACE']}): it must be longer, by at most 30 s")


def check_services(overlay, docs):
    pods = [
        (doc["spec"]["template"]["metadata"].get("labels", {}), containers(doc))
        for doc in docs
        if doc["kind"] in WORKLOAD_KINDS
    ]
    for service in by_kind(docs, "Service"):
        where = f"{overlay}: Service {service['metadata']['name']}"
        targets = [c for labels, cs in pods if selects({"matchLabels": service["spec"]["selector"]}, labels) for c in cs]
        if not targets:
            raise Invalid(f"{where}: selects no pods")
        declared = {p.get("name") for c in targets for p in c.get("ports", [])}
        declared |= {p["containerPort"] for c in targets for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in declared:
                raise Invalid(f"{where}: targetPort {port.get('targetPort')!r} is not a container port")


# --- 3. images --------------------------------------------------------------------------------


def produced_images():
    listing = run(["bash", os.path.join(REPO, "scripts", "build-images"), "--list"])
    return dict(line.rsplit(":", 1) for line in listing.split())


def third_party_images():
    with open(os.path.join(K8S, "third-party-images.txt"), encoding="utf-8") as handle:
        return {line.strip() for line in handle if line.strip() and not line.startswith("#")}


def split_ref(ref):
    """(name, tag) of an image reference; tag None when it has none (means `latest`)."""
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return ref, None
    return ref.rsplit(":", 1)[0], ref.rsplit(":", 1)[1]


def check_images(rendered):
    produced, pinned = produced_images(), third_party_images()
    used = set()
    for overlay, docs in rendered.items():
        for workload in (doc for doc in docs if doc["kind"] in WORKLOAD_KINDS):
            for container in containers(workload):
                ref = container["image"]
                where = f"{overlay}: {workload['metadata']['name']}/{container['name']}: image {ref}"
                name, tag = split_ref(ref)
                if tag in (None, "latest"):
                    raise Invalid(f"{where}: untagged or `latest`; pin a version")
                used.add(ref)
                if name in produced:
                    if tag != produced[name]:
                        raise Invalid(f"{where}: scripts/build-images tags it {produced[name]}")
                    if overlay == "kind" and container.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
                        raise Invalid(f"{where}: kind must not pull the project's images")
                elif ref not in pinned:
                    raise Invalid(f"{where}: neither built by scripts/build-images nor pinned "
                                  "in deploy/k8s/third-party-images.txt")
    for ref in sorted(pinned - used):
        raise Invalid(f"deploy/k8s/third-party-images.txt: {ref} is used by no manifest")
    for ref in pinned:
        if split_ref(ref)[1] in (None, "latest"):
            raise Invalid(f"deploy/k8s/third-party-images.txt: {ref} is not pinned")
    # The sources too: a `latest` in a comment-free line of any deploy file or the Tiltfile.
    for path in glob.glob(os.path.join(REPO, "deploy", "**", "*"), recursive=True) + [
        os.path.join(REPO, "Tiltfile")
    ]:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if re.search(r":latest\b", line.split("#", 1)[0]):
                        raise Invalid(f"{os.path.relpath(path, REPO)}:{number}: a `latest` tag")
    return len(used)


# --- 4. NATS ---------------------------------------------------------------------------------


def nats_statefulset(overlay, docs):
    statefulsets = [s for s in by_kind(docs, "StatefulSet") if s["metadata"]["name"].startswith("nats")]
    if len(statefulsets) != 1:
        raise Invalid(f"{overlay}: expected one NATS StatefulSet, found {len(statefulsets)}")
    return statefulsets[0]


def write_nats_config(docs, sts, directory):
    """Writes the files of the StatefulSet's config ConfigMap; returns the main file's path."""
    config_name = next(v["configMap"]["name"] for v in pod_spec(sts)["volumes"] if "configMap" in v)
    files = next(c["data"] for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == config_name)
    for file_name, text in files.items():
        with open(os.path.join(directory, file_name), "w", encoding="utf-8") as handle:
            handle.write(text)
    args = pod_spec(sts)["containers"][0]["args"]
    return os.path.join(directory, os.path.basename(args[args.index("--config") + 1])), files


def check_nats(overlay, docs, workdir):
    sts = nats_statefulset(overlay, docs)
    name, replicas, service = sts["metadata"]["name"], sts["spec"]["replicas"], sts["spec"]["serviceName"]
    headless = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == service]
    if not headless or headless[0]["spec"].get("clusterIP") != "None":
        raise Invalid(f"{overlay}: serviceName {service} of StatefulSet {name} is not a headless Service")
    ports = {p["name"]: p["containerPort"] for p in pod_spec(sts)["containers"][0]["ports"]}
    main, files = write_nats_config(docs, sts, tempfile.mkdtemp(prefix=f"nats-{overlay}-", dir=workdir))
    run([tool("nats-server"), "-t", "-c", main], env={**os.environ, "POD_NAME": f"{name}-0"})

    text = "\n".join(line.split("#", 1)[0] for line in "\n".join(files.values()).splitlines())
    if not re.search(r"^\s*sync_interval\s*:\s*always\s*$", text, re.MULTILINE):
        raise Invalid(f"{overlay}: the NATS config does not fsync every write (sync_interval: always)")
    routes = set(re.findall(r"nats-route://([^\s,\]]+)|nats://([^\s,\]]+)", text))
    routes = {a or b for a, b in routes}
    expected = {f"{name}-{i}.{service}:{ports['cluster']}" for i in range(replicas)} if replicas > 1 else set()
    if routes != expected:
        raise Invalid(f"{overlay}: NATS routes {sorted(routes)} do not match the StatefulSet's "
                      f"pods {sorted(expected)}")

    env = next(c["data"] for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("elk-env"))
    if int(env.get("ELK_REPLICAS", "0")) != replicas:
        raise Invalid(f"{overlay}: ELK_REPLICAS={env.get('ELK_REPLICAS')} but NATS runs {replicas} servers")
    return replicas


# --- 5. Prometheus and Grafana -----------------------------------------------------------------

# kubernetes_sd_configs keys Prometheus accepts that this deployment may use.
K8S_SD_ROLES = {"pod", "node", "service", "endpoints", "endpointslice", "ingress"}
K8S_SD_KEYS = {"role", "namespaces", "selectors", "attach_metadata"}


def configmap_files(docs, prefix):
    """The data of the rendered ConfigMap whose name starts with `prefix` (kustomize adds a hash)."""
    found = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith(prefix + "-")]
    if len(found) != 1:
        raise Invalid(f"expected one ConfigMap {prefix}-<hash>, found {len(found)}")
    return found[0]["data"]


def check_prometheus_config(overlay, docs, workdir):
    """`promtool check config` on the rendered prometheus.yml with the rendered rule files.

    Debian's promtool (the only one installable here) is built without Kubernetes service
    discovery, so each kubernetes_sd_configs entry is checked here (role, keys) and replaced by an
    equivalent file_sd_configs before promtool checks everything else: intervals, relabelling,
    and the rule files its rule_files patterns find among the `prometheus-rules` ConfigMap's files
    (as mounted in the pod).
    """
    config = yaml.safe_load(configmap_files(docs, "prometheus-config")["prometheus.yml"])
    directory = tempfile.mkdtemp(prefix=f"prometheus-{overlay}-", dir=workdir)
    rules_dir = os.path.join(directory, "rules")
    os.makedirs(rules_dir)
    rules = configmap_files(docs, "prometheus-rules")
    for file_name, text in rules.items():
        with open(os.path.join(rules_dir, file_name), "w", encoding="utf-8") as handle:
            handle.write(text)
    targets = os.path.join(directory, "k8s-sd-targets.json")
    with open(targets, "w", encoding="utf-8") as handle:
        json.dump([], handle)
    for scrape in config.get("scrape_configs", []):
        for sd in scrape.pop("kubernetes_sd_configs", []):
            if sd.get("role") not in K8S_SD_ROLES or set(sd) - K8S_SD_KEYS:
                raise Invalid(f"prometheus.yml job {scrape['job_name']}: bad kubernetes_sd_configs {sd}")
            scrape.setdefault("file_sd_configs", []).append({"files": [targets]})
    mount = "/etc/prometheus/rules/"
    for pattern in config.get("rule_files", []):
        if not pattern.startswith(mount):
            raise Invalid(f"prometheus.yml: rule_files {pattern} is outside the rules mount {mount}")
    config["rule_files"] = [rules_dir + "/" + p[len(mount):] for p in config.get("rule_files", [])]
    checked = os.path.join(directory, "prometheus.yml")
    with open(checked, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    output = run(["promtool", "check", "config", checked])
    if f"SUCCESS: {len(rules)} rule files found" not in output:
        raise Invalid(f"rule_files does not find the {len(rules)} rule files of the ConfigMap:\n{output}")
    return len(rules)


def check_prometheus_rules():
    rules = os.path.join(OBSERVABILITY, "rules")
    run(["promtool", "check", "rules", *sorted(glob.glob(os.path.join(rules, "*.rules.yml")))])
    tests = sorted(glob.glob(os.path.join(rules, "*.test.yml")))
    if not tests:
        raise Invalid("no rule unit tests (rules/*.test.yml)")
    run(["promtool", "test", "rules", *tests], cwd=rules)
    return len(tests)


def check_grafana():
    grafana = os.path.join(OBSERVABILITY, "grafana")
    with open(os.path.join(grafana, "datasources.yaml"), encoding="utf-8") as handle:
        uids = {d["uid"] for d in yaml.safe_load(handle)["datasources"]}
    with open(os.path.join(grafana, "dashboards.yaml"), encoding="utf-8") as handle:
        if not yaml.safe_load(handle).get("providers"):
            raise Invalid("grafana/dashboards.yaml has no dashboard provider")
    dashboards = sorted(glob.glob(os.path.join(grafana, "dashboards", "*.json")))
    for path in dashboards:
        with open(path, encoding="utf-8") as handle:
            dashboard = json.load(handle)
        for key in ("uid", "title", "panels"):
            if key not in dashboard:
                raise Invalid(f"{os.path.relpath(path, REPO)}: no `{key}`")
        for panel in dashboard["panels"]:
            for source in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                if source and source.get("uid") not in uids:
                    raise Invalid(f"{os.path.relpath(path, REPO)}: panel {panel.get('title')!r} uses "
                                  f"datasource uid {source.get('uid')!r}, not provisioned")
    return len(dashboards)


# --- 6. metric names ------------------------------------------------------------------------------

METRICS_DOC = os.path.join(REPO, "docs", "observability.md")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")


def documented_metrics():
    """The metric names of docs/observability.md's tables (rows starting with | `elk_...`)."""
    with open(METRICS_DOC, encoding="utf-8") as handle:
        names = set(re.findall(r"^\| `(elk_[a-z0-9_]+)`", handle.read(), re.MULTILINE))
    if not names:
        raise Invalid(f"{os.path.relpath(METRICS_DOC, REPO)} documents no elk_ metric")
    return names


def check_metric_names(overlay, docs, workdir):
    """Rules and dashboards use documented metrics only; dashboard queries parse."""
    documented = documented_metrics()
    queries, dashboard_queries = [], []
    for name, text in configmap_files(docs, "prometheus-rules").items():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                queries.append((f"{name}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    for name, text in configmap_files(docs, "grafana-dashboards").items():
        for panel in json.loads(text)["panels"]:
            for target in panel.get("targets", []):
                where = f"{name}: panel {panel.get('title')!r}"
                queries.append((where, target["expr"]))
                dashboard_queries.append(target["expr"])
    for where, expr in queries:
        for metric in set(re.findall(r"\belk_[a-z0-9_]+", expr)):
            base = next((metric[: -len(suffix)] for suffix in HISTOGRAM_SERIES
                         if metric.endswith(suffix) and metric[: -len(suffix)] in documented), metric)
            if base not in documented:
                raise Invalid(f"{overlay}: {where} uses {metric}, which is not documented in "
                              f"{os.path.relpath(METRICS_DOC, REPO)}")
    # Grafana's range variable is not PromQL; any duration stands in for it.
    rules = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$__range", "1h")}
        for index, expr in enumerate(dashboard_queries)]}]}
    path = os.path.join(tempfile.mkdtemp(prefix=f"dashboards-{overlay}-", dir=workdir), "queries.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(rules, handle)
    try:
        run(["promtool", "check", "rules", path])
    except Invalid as error:
        raise Invalid(f"{overlay}: a dashboard query does not parse: {error}") from error
    return len(queries)


# --- self-test: each check must reject a seeded mistake ----------------------------------------


def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def first_container(docs, name):
    return pod_spec(find(docs, "Deployment", name))["containers"][0]


def set_env(container, name, value):
    for variable in container["env"]:
        if variable["name"] == name:
            variable.clear()
            variable.update({"name": name, "value": value})


def edit_configmap(docs, prefix, file_name, edit):
    data = configmap_files(docs, prefix)
    data[file_name] = edit(data[file_name])


# (what, overlay, mutation of that overlay's rendered objects, words the rejection must contain)
SEEDED_MISTAKES = [
    ("selector mismatch", "prod", lambda d: find(d, "Deployment", "elk-assigner")["spec"]["selector"]
     ["matchLabels"].update({"app.kubernetes.io/name": "elk-assigner-v2"}), "selector does not match"),
    ("no disruption budget", "prod", lambda d: d.remove(find(d, "PodDisruptionBudget", "elk-scaler")),
     "no PodDisruptionBudget"),
    ("writable root filesystem", "kind", lambda d: first_container(d, "elk-checksum-worker")
     ["securityContext"].update({"readOnlyRootFilesystem": False}), "read-only"),
    ("probe on an undeclared port", "kind", lambda d: first_container(d, "elk-election")
     ["livenessProbe"]["httpGet"].update({"port": "metric"}), "undeclared port"),
    ("missing ConfigMap", "prod", lambda d: first_container(d, "elk-scaler")["envFrom"][0]
     ["configMapRef"].update({"name": "elk-config"}), "missing ConfigMap"),
    ("member id not the pod name", "kind", lambda d: set_env(
        first_container(d, "elk-assigner"), "ELK_MEMBER_ID", "assigner-1"), "ELK_MEMBER_ID"),
    ("grace period shorter than the drain", "kind", lambda d: pod_spec(find(
        d, "Deployment", "elk-checksum-worker")).update({"terminationGracePeriodSeconds": 30}),
     "does not match the drain"),
    ("service links on", "prod", lambda d: pod_spec(find(d, "Deployment", "elk-election")).update(
        {"enableServiceLinks": True}), "enableServiceLinks"),
    ("Service to an undeclared port", "kind", lambda d: find(d, "Service", "elk-assigner")["spec"]
     ["ports"][0].update({"targetPort": "admin"}), "is not a container port"),
    ("latest image", "prod", lambda d: first_container(d, "elk-election").update(
        {"image": "elk-election:latest"}), "latest"),
    ("image nobody builds", "prod", lambda d: first_container(d, "elk-scaler").update(
        {"image": "elk-autoscaler:0.1.0"}), "neither built"),
    ("stale tag", "kind", lambda d: first_container(d, "elk-assigner").update(
        {"image": "elk-assigner:0.0.9"}), "tags it"),
    ("kind pulls a project image", "kind", lambda d: first_container(d, "elk-election").update(
        {"imagePullPolicy": "Always"}), "must not pull"),
    ("route to a pod that does not exist", "prod", lambda d: edit_configmap(
        d, "nats-config", "cluster.conf", lambda t: t.replace("nats-2.", "nats-3.")), "do not match"),
    ("routes on a single server", "kind", lambda d: edit_configmap(
        d, "nats-config", "cluster.conf", lambda t: t + "cluster { routes: [nats://nats-0.nats-headless:6222] }\n"),
     "do not match"),
    ("default fsync", "prod", lambda d: edit_configmap(
        d, "nats-config", "nats.conf", lambda t: t.replace("sync_interval: always", "")), "fsync"),
    ("R1 on three servers", "prod", lambda d: configmap_files(d, "elk-env").update(
        {"ELK_REPLICAS": "1"}), "ELK_REPLICAS"),
    ("NATS config error", "kind", lambda d: edit_configmap(
        d, "nats-config", "limits.conf", lambda t: t + "max_file_store: lots\n"), "nats-server"),
    ("rule files not found", "prod", lambda d: edit_configmap(
        d, "prometheus-config", "prometheus.yml", lambda t: t.replace("rules/*.yml", "rules/*.yaml")),
     "rule files"),
    ("alert on an undocumented metric", "prod", lambda d: edit_configmap(
        d, "prometheus-rules", "elk.rules.yml", lambda t: t.replace(
            "elk_job_ids_remaining", "elk_job_ids_left")), "not documented"),
    ("dashboard query that does not parse", "kind", lambda d: edit_configmap(
        d, "grafana-dashboards", "elk-overview.json", lambda t: t.replace(
            "rate(elk_job_ids_completed_total[1m])", "rate(elk_job_ids_completed_total[1m]", 1)),
     "does not parse"),
]


def self_test(rendered, workdir):
    failures = 0
    for what, overlay, mutate, expected in SEEDED_MISTAKES:
        mutated = copy.deepcopy(rendered)
        mutate(mutated[overlay])
        try:
            check_all(mutated, workdir)
            print(f"FAIL {what}: the seeded mistake was accepted")
            failures += 1
        except Invalid as error:
            reason = str(error).splitlines()[0]
            if expected in str(error):
                print(f"ok   {what}: {reason}")
            else:
                print(f"FAIL {what}: rejected for another reason: {reason}")
                failures += 1
    print(f"{len(SEEDED_MISTAKES) - failures} passed, {failures} failed")
    return failures == 0


# --- driver ------------------------------------------------------------------------------------


def step(label, action, quiet=False):
    started = time.monotonic()
    detail = action()
    if not quiet:
        print(f"ok  {label}{f' ({detail})' if detail else ''} [{time.monotonic() - started:.1f} s]")


def check_all(rendered, workdir, quiet=True):
    """Every check after rendering and schema validation, on the rendered objects."""

    def semantics():
        for overlay, docs in rendered.items():
            check_workloads(overlay, docs)
            check_services(overlay, docs)

    step("selectors, disruption budgets, ports, references, security, ELK env", semantics, quiet)
    step("images", lambda: f"{check_images(rendered)} distinct references", quiet)
    step("NATS config (nats-server -t, routes, fsync, ELK_REPLICAS)", lambda: ", ".join(
        f"{o}: {check_nats(o, d, workdir)} server(s)" for o, d in rendered.items()), quiet)
    step("promtool check config", lambda: ", ".join(
        f"{o}: {check_prometheus_config(o, d, workdir)} rule files" for o, d in rendered.items()), quiet)
    step("documented metrics in rules and dashboards, queries parse", lambda: ", ".join(
        f"{o}: {check_metric_names(o, d, workdir)} queries" for o, d in rendered.items()), quiet)


def main(argv):
    workdir = tempfile.mkdtemp(prefix="elk-validate-deploy-")
    try:
        rendered, paths = {}, []

        def render_all():
            for overlay in overlays():
                path, docs = render(overlay, workdir)
                rendered[overlay], _ = docs, paths.append(path)
            return ", ".join(f"{o}: {len(d)} objects" for o, d in rendered.items())

        step("kubectl kustomize", render_all, quiet="--nats-config" in argv)
        if "--nats-config" in argv:
            # For scripts/check-nats-cluster: OVERLAY DIR -> the config files in DIR, and on
            # stdout the StatefulSet's name, servers, headless Service and the main file's path.
            overlay, directory = argv[argv.index("--nats-config") + 1:][:2]
            sts = nats_statefulset(overlay, rendered[overlay])
            main_file, _ = write_nats_config(rendered[overlay], sts, directory)
            print(sts["metadata"]["name"], sts["spec"]["replicas"], sts["spec"]["serviceName"],
                  os.path.basename(main_file))
            return 0
        if "--self-test" in argv:
            return 0 if self_test(rendered, workdir) else 1
        step("kubernetes-validate --strict", lambda: schema_validate(paths) or
             f"Kubernetes {', '.join(K8S_VERSIONS)}")
        check_all(rendered, workdir, quiet=False)
        step("promtool check rules / test rules", lambda: f"{check_prometheus_rules()} test files")
        step("Grafana provisioning", lambda: f"{check_grafana()} dashboards")
    except Invalid as error:
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
