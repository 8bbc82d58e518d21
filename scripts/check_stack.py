"""Runs the kind overlay's ELK stack as containers and processes a job through it.

What the manifests promise the binaries, checked with the real images: every ELK workload of the
rendered kind overlay is started as containers with exactly the environment its pod would get
(the elk-env ConfigMap, its `env` with the pod name for ELK_MEMBER_ID, `$(VAR)` expansion in its
args), its image, its user, a read-only root filesystem and no capabilities; the NATS server with
the overlay's rendered config. Service names resolve as in the cluster (`nats`; `jaeger` points
at an address where nothing listens, so spans are dropped). Then every process with probes must
answer `/healthz` and `/readyz` (200) and serve `/metrics` on its `metrics` port, a job created
with the elkctl image must complete (also as seen through the assigner's HTTP admin API on its
`http` port, which also serves the status page), every process must still be running afterwards,
and on SIGTERM every ELK process must exit 0 within its pod's termination grace period.

`--no-probes` skips the probe and metrics endpoints (for a build of the binaries that predates
them). Run by scripts/check-stack (which picks the engine and needs the images of
scripts/build-images).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import validate_deploy as deploy

ENGINE = os.environ.get("ENGINE", "podman")
PREFIX = f"elk-stack-{os.getpid()}"
DEADLINE_SECONDS = 90
JOB = "stack-check"
IDS = 200_000


class StackFailed(Exception):
    """The stack did not do what the manifests promise; the message says what."""


def engine(*args, check=True):
    result = subprocess.run([ENGINE, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise StackFailed(f"{ENGINE} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def wait_until(what, condition):
    """Polls `condition` (returns a truthy value when met) until the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StackFailed(f"{what}: not within {DEADLINE_SECONDS} s")
        time.sleep(0.5)


def secret_value(docs, name, key):
    """A key of a rendered Secret (kustomize's secretGenerator writes base64 `data`)."""
    for secret in docs:
        if secret.get("kind") == "Secret" and secret["metadata"]["name"] == name:
            if key in secret.get("stringData", {}):
                return secret["stringData"][key]
            return base64.b64decode(secret["data"][key]).decode()
    raise StackFailed(f"no Secret {name} with key {key} among the rendered manifests")


def pod_environment(container, pod_name, namespace, elk_env, docs):
    """The variables a container of pod `pod_name` in `namespace` gets, as Kubernetes would set them."""
    env = {}
    for source in container.get("envFrom", []):
        if source.get("configMapRef", {}).get("name", "").startswith("elk-env"):
            env.update(elk_env)
        else:
            raise StackFailed(f"{container['name']}: envFrom {source} has no stand-in here")
    for variable in container.get("env", []):
        field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif field == "metadata.name":
            env[variable["name"]] = pod_name
        elif secret:
            env[variable["name"]] = secret_value(docs, secret["name"], secret["key"])
        elif field == "metadata.namespace":
            env[variable["name"]] = namespace
        else:
            raise StackFailed(f"{container['name']}: {variable['name']} has no stand-in here")
    return env


def expand(arg, env):
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def http_status(port, path, token=None):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return None, ""


class Stack:
    def __init__(self, docs, workdir):
        self.docs, self.workdir = docs, workdir
        self.subnet_base = f"10.{random.randint(200, 249)}.{random.randint(0, 249)}"
        self.next_host = 10
        self.containers = []
        self.elk_env = deploy.configmap_files(docs, "elk-env")
        self.hosts = {}
        # pod -> (local port, read token) of its HTTP admin API (ELK_ASSIGNER__HTTP_LISTEN)
        self.admin_api = {}
        # pod -> terminationGracePeriodSeconds of its workload
        self.grace_periods = {}

    def address(self):
        self.next_host += 1
        return f"{self.subnet_base}.{self.next_host}"

    def run(self, name, image, args, env, user, ports, mounts=()):
        command = ["run", "-d", "--name", name, "--network", PREFIX, "--ip", self.hosts[name],
                   "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                   "--user", user]
        for host, address in self.hosts.items():
            command += ["--add-host", f"{host}:{address}"]
        for key, value in env.items():
            command += ["-e", f"{key}={value}"]
        for port in ports:
            command += ["-p", f"127.0.0.1::{port}"]
        for mount in mounts:
            command += mount
        self.containers.append(name)
        engine(*command, image, *args)

    def published(self, name, port):
        mapping = engine("port", name, f"{port}/tcp", check=False).splitlines()
        if not mapping:
            state = engine("inspect", "--format", "{{.State.Status}} (exit code {{.State.ExitCode}})", name)
            raise StackFailed(f"{name} has no published port {port}: it is {state}")
        return int(mapping[0].rsplit(":", 1)[1])

    def start(self):
        engine("network", "create", "--subnet", f"{self.subnet_base}.0/24", PREFIX)
        sts = deploy.nats_statefulset("kind", self.docs)
        nats_config = os.path.join(self.workdir, "nats")
        os.makedirs(nats_config, mode=0o755)
        main_file, _ = deploy.write_nats_config(self.docs, sts, nats_config)
        for path in os.listdir(nats_config):
            os.chmod(os.path.join(nats_config, path), 0o644)
        workloads = [d for d in self.docs if d["kind"] == "Deployment" and d["spec"]["template"]
                     ["metadata"]["labels"].get("app.kubernetes.io/component") in deploy.ELK_COMPONENTS]
        # Names first: every container resolves every other one (and the Services) from the start.
        self.hosts["nats-0"] = self.address()
        self.hosts["nats"] = self.hosts["nats-0"]
        self.hosts["jaeger"] = self.address()  # nothing listens there
        pods = []
        for workload in workloads:
            for replica in range(workload["spec"]["replicas"]):
                pod = f"{workload['metadata']['name']}-{replica}"
                self.hosts[pod] = self.address()
                pods.append((pod, workload))

        nats = deploy.pod_spec(sts)["containers"][0]
        self.run("nats-0", nats["image"], [a.replace("/etc/nats/nats.conf", f"/etc/nats/{os.path.basename(main_file)}")
                                           for a in nats["args"]],
                 {"POD_NAME": "nats-0"}, str(deploy.pod_spec(sts)["securityContext"]["runAsUser"]), [8222],
                 mounts=[["-v", f"{nats_config}:/etc/nats:ro"], ["--tmpfs", "/var/run/nats:mode=1777"]])
        monitor = self.published("nats-0", 8222)
        wait_until("nats-server healthy", lambda: http_status(monitor, "/healthz")[0] == 200)

        endpoints = {}
        for pod, workload in pods:
            spec = deploy.pod_spec(workload)
            container = spec["containers"][0]
            namespace = workload["metadata"].get("namespace", "default")
            env = pod_environment(container, pod, namespace, self.elk_env, self.docs)
            args = [expand(a, env) for a in container.get("args", [])]
            ports = [p["containerPort"] for p in container.get("ports", [])]
            self.run(pod, container["image"], args, env, str(spec["securityContext"]["runAsUser"]), ports)
            self.grace_periods[pod] = spec.get("terminationGracePeriodSeconds", 30)
            if "readinessProbe" in container:
                endpoints[pod] = self.published(pod, deploy.METRICS_PORT)
            for port in container.get("ports", []):
                if port["name"] == "http":
                    token = env.get("ELK_HTTP_READ_TOKENS", "").split(",")[0]
                    self.admin_api[pod] = (self.published(pod, port["containerPort"]), token)
        return endpoints

    def assert_running(self):
        for name in self.containers:
            state = engine("inspect", "--format", "{{.State.Status}} (exit code {{.State.ExitCode}})", name)
            if not state.startswith("running"):
                raise StackFailed(f"{name} is {state}")

    def logs(self, name):
        result = subprocess.run([ENGINE, "logs", "--tail", "15", name], capture_output=True, text=True)
        return (result.stdout + result.stderr).strip()

    def stop_gracefully(self):
        """SIGTERM to every ELK process at once, as a rollout or `kubectl delete` would: each must
        exit 0 within its pod's termination grace period (the workers drain first)."""
        elk = [name for name in self.containers if not name.startswith("nats")]
        grace = max(self.grace_periods.values())
        started = time.monotonic()
        engine("stop", "--time", str(grace), *elk)
        took = time.monotonic() - started
        for name in elk:
            code = engine("inspect", "--format", "{{.State.ExitCode}}", name)
            if code != "0":
                raise StackFailed(f"{name} exited {code} on SIGTERM instead of 0:\n{self.logs(name)}")
        print(f"ok  SIGTERM: all {len(elk)} ELK processes exited 0 within {took:.1f} s "
              f"(grace periods up to {grace} s)")

    def stop(self):
        """Stops everything at once (workers drain on SIGTERM), then removes it."""
        if self.containers:
            engine("stop", "--time", "20", *self.containers, check=False)
            engine("rm", "--force", "--volumes", *self.containers, check=False)
        engine("network", "rm", PREFIX, check=False)
        leftover = engine("ps", "--all", "--quiet", "--filter", f"name={PREFIX}|" +
                          "|".join(self.containers), check=False) if self.containers else ""
        if leftover:
            print(f"warning: containers left behind: {leftover.split()}", file=sys.stderr)


def elkctl(stack, *args):
    """Runs the elkctl image once on the stack's network; returns its output."""
    ref = next(line for line in subprocess.run(
        ["bash", os.path.join(deploy.REPO, "scripts", "build-images"), "--list", "elkctl"],
        capture_output=True, text=True, check=True).stdout.split())
    command = ["run", "--rm", "--network", PREFIX, "--read-only", "--cap-drop", "ALL"]
    for host, address in stack.hosts.items():
        command += ["--add-host", f"{host}:{address}"]
    command += ["-e", f"ELK_NATS_URL={stack.elk_env['ELK_NATS_URL']}",
                "-e", f"ELK_NAMESPACE={stack.elk_env['ELK_NAMESPACE']}", ref, *args]
    return subprocess.run([ENGINE, *command], capture_output=True, text=True)


def check(stack, endpoints, probes):
    for pod, port in endpoints.items() if probes else ():
        wait_until(f"{pod} /readyz", lambda port=port: http_status(port, "/readyz")[0] == 200)
        if http_status(port, "/healthz")[0] != 200:
            raise StackFailed(f"{pod}: /healthz does not answer 200")
        status, body = http_status(port, "/metrics")
        if status != 200 or "# TYPE" not in body:
            raise StackFailed(f"{pod}: /metrics does not serve Prometheus text")
        print(f"ok  {pod}: /healthz, /readyz, /metrics on its metrics port")
    created = elkctl(stack, "job", "create", JOB, "--start", "1", "--end", str(IDS),
                     "--partition-size", "10000")
    if created.returncode != 0:
        raise StackFailed(f"elkctl job create: {created.stderr.strip()}")

    def completed():
        answer = elkctl(stack, "job", "get", JOB, "--json")
        if answer.returncode != 0:
            return None
        job = json.loads(answer.stdout)["job"]
        return job if job["state"] == "completed" else None

    job = wait_until(f"job {JOB} completed", completed)
    if job["ids_completed"] != IDS:
        raise StackFailed(f"job {JOB} completed with {job['ids_completed']} of {IDS} IDs")
    print(f"ok  job {JOB}: {job['ids_completed']} IDs in {job['partitions_total']} partitions completed")
    for pod, (port, token) in stack.admin_api.items():
        if http_status(port, f"/v1/jobs/{JOB}")[0] != 401:
            raise StackFailed(f"{pod}: the HTTP admin API answers without a token")
        status, body = http_status(port, f"/v1/jobs/{JOB}", token)
        if status != 200 or json.loads(body)["job"]["state"] != "completed":
            raise StackFailed(f"{pod}: the HTTP admin API does not show {JOB} completed ({status})")
        print(f"ok  {pod}: the HTTP admin API shows {JOB} completed")
        status, body = http_status(port, "/status", token)
        if status != 200 or "<title>ELK Coordinator status</title>" not in body:
            raise StackFailed(f"{pod}: GET /status does not serve the status page ({status})")
        print(f"ok  {pod}: the status page is served")
    if not stack.admin_api:
        raise StackFailed("no container declares the admin API port `http`")
    stack.assert_running()
    print(f"ok  all {len(stack.containers)} containers still running")
    stack.stop_gracefully()


def main():
    with tempfile.TemporaryDirectory(prefix="elk-check-stack-") as workdir:
        _, docs = deploy.render("kind", workdir)
        stack = Stack(docs, workdir)
        try:
            endpoints = stack.start()
            check(stack, endpoints, probes="--no-probes" not in sys.argv[1:])
        except StackFailed as error:
            print(f"FAIL {error}", file=sys.stderr)
            for name in stack.containers:
                print(f"--- {name}\n{stack.logs(name)}", file=sys.stderr)
            return 1
        finally:
            stack.stop()
    print("check-stack: the kind overlay's ELK stack ran a job with the manifests' environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
