"""Evaluates the Tiltfile under stand-ins for Tilt's builtins and checks what it names.

Tilt itself cannot run here, so this runs the Tiltfile in starlark-rust (PyPI `starlark-pyo3`)
with every Tilt builtin it uses replaced by a recorder, then checks the recorded calls:

- the file parses, evaluates, and has no lint findings (unused names, misspelled builtins);
- every path it names exists (build deps, the kustomize directory);
- every image it builds is one `scripts/build-images --list` produces, built by that script, and
  used by a workload of the rendered kind overlay; every project image a workload runs is built;
- `kustomize()` really renders the overlay (`kubectl kustomize`); every `k8s_resource` names a
  workload in it, every port-forward targets a container port the workload declares, every
  `resource_deps` entry is a resource, and every ELK process waits for NATS;
- a manual button creates a job with `elkctl job create` against the NATS port-forward and the
  overlay's ELK namespace.

Usage: check_tiltfile.py [--self-test] [TILTFILE]   (run by scripts/validate-deploy)
`--self-test` seeds one mistake at a time into a copy of the Tiltfile and requires the check to
reject each one, and the unmodified file to pass.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import starlark as sl
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# Pods that connect to NATS: they must start after it.
NATS_CLIENT_COMPONENTS = {"control-plane", "worker"}
TRIGGER_MODE_AUTO, TRIGGER_MODE_MANUAL = 0, 1


class TiltfileError(Exception):
    """A mistake in the Tiltfile, with the reason."""


@dataclass
class Workload:
    name: str
    images: list[str]
    ports: set[int]
    component: str
    env: dict[str, str]


@dataclass
class Recorder:
    """What the Tiltfile asked Tilt to do, and the kind overlay it rendered."""

    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)
    rendered: list[dict] = field(default_factory=list)

    def stub(self, name, returns=None):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return returns(*args, **kwargs) if returns else None

        return record

    def kustomize(self, path, *_args, **_kwargs):
        output = render_kustomization(repo_path(path, "kustomize"))
        self.rendered.extend(doc for doc in yaml.safe_load_all(output) if doc)
        return output

    def named(self, name):
        return [(args, kwargs) for call, args, kwargs in self.calls if call == name]


@functools.cache
def render_kustomization(directory):
    render = subprocess.run(
        [tool("kubectl"), "kustomize", directory], capture_output=True, text=True
    )
    if render.returncode != 0:
        raise TiltfileError(f"kustomize({directory!r}) fails: {render.stderr.strip()}")
    return render.stdout


def tool(name):
    """A tool of the deploy venv (scripts/deploy-tools.sh), else from PATH."""
    venv_bin = os.environ.get("DEPLOY_TOOLS_BIN")
    return os.path.join(venv_bin, name) if venv_bin else name


def repo_path(path, what):
    if not isinstance(path, str):
        raise TiltfileError(f"{what}: expected a path string, got {path!r}")
    full = os.path.join(REPO, path)
    if not os.path.exists(full):
        raise TiltfileError(f"{what}: path {path!r} does not exist")
    return full


def arg(args, kwargs, position, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def port_forward(local_port, container_port=None, name=None, **_kwargs):
    return {"local": local_port, "container": container_port or local_port, "name": name}


def parse_port_forward(spec):
    """Tilt accepts 8080, '8080', '9000:8080', 'host:9000:8080' or port_forward(...)."""
    if isinstance(spec, dict):
        return int(spec["local"]), int(spec["container"])
    if isinstance(spec, int):
        return spec, spec
    parts = str(spec).split(":")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[-2]), int(parts[-1])


@functools.cache
def built_images():
    """Image name -> tag, from the build script's own list (what CI builds and runs)."""
    listing = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "build-images"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    refs = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    return dict(ref.rsplit(":", 1) for ref in refs)


def image_name(ref):
    """`docker.io/x/y:1.2` -> `docker.io/x/y`; a digest or tag is dropped."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[: len(ref) - len(last)] + last.split(":", 1)[0]


def workloads(rendered):
    found = {}
    for doc in rendered:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        pod = doc["spec"]["template"]
        containers = pod["spec"].get("containers", [])
        env = {}
        for container in containers:
            for variable in container.get("env", []):
                env[variable["name"]] = variable.get("value", "")
        found[doc["metadata"]["name"]] = Workload(
            name=doc["metadata"]["name"],
            images=[c["image"] for c in containers],
            ports={p["containerPort"] for c in containers for p in c.get("ports", [])},
            component=pod["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""),
            env=env,
        )
    return found


def elk_env(rendered):
    for doc in rendered:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].startswith("elk-env"):
            return doc.get("data", {})
    raise TiltfileError("the rendered overlay has no elk-env ConfigMap")


def evaluate(path, source):
    dialect = sl.Dialect.extended()
    dialect.enable_top_level_stmt = True  # Tilt allows top-level for/if
    try:
        ast = sl.parse(path, source, dialect)
    except sl.StarlarkError as error:
        raise TiltfileError(f"parse error: {error}") from None
    lints = [
        f"line {lint.resolved_location.span.begin.line}: {lint.short_name}: {lint.problem}"
        for lint in ast.lint()
    ]
    if lints:
        raise TiltfileError("lint: " + "; ".join(lints))

    recorder = Recorder()
    module = sl.Module()
    for name in [
        "custom_build",
        "docker_build",
        "k8s_yaml",
        "k8s_resource",
        "local_resource",
        "allow_k8s_contexts",
        "update_settings",
        "watch_file",
    ]:
        module.add_callable(name, recorder.stub(name))
    module.add_callable("kustomize", recorder.kustomize)
    module.add_callable("port_forward", port_forward)
    module["TRIGGER_MODE_AUTO"] = TRIGGER_MODE_AUTO
    module["TRIGGER_MODE_MANUAL"] = TRIGGER_MODE_MANUAL

    def no_extensions(module_id):
        raise TiltfileError(f"load({module_id!r}): no stand-in for this extension")

    try:
        sl.eval(module, ast, sl.Globals.standard(), sl.FileLoader(no_extensions))
    except sl.StarlarkError as error:
        raise TiltfileError(f"evaluation error: {error}") from None
    return recorder


def check_images(recorder, found):
    produced = built_images()
    built = {}
    for args, kwargs in recorder.named("custom_build"):
        ref, command = arg(args, kwargs, 0, "ref"), arg(args, kwargs, 1, "command")
        if ref not in produced:
            raise TiltfileError(
                f"custom_build({ref!r}): scripts/build-images does not produce it "
                f"(it produces {', '.join(sorted(produced))})"
            )
        words = str(command).split()
        if "scripts/build-images" not in words or ref not in words or "$EXPECTED_REF" not in words:
            raise TiltfileError(
                f"custom_build({ref!r}): the command must be `scripts/build-images "
                f"--tag-as $EXPECTED_REF {ref}`, got {command!r}"
            )
        for dep in arg(args, kwargs, 2, "deps", []):
            repo_path(dep, f"custom_build({ref!r}) deps")
        built[ref] = True
    for args, kwargs in recorder.named("docker_build"):
        ref = arg(args, kwargs, 0, "ref")
        repo_path(arg(args, kwargs, 1, "context"), f"docker_build({ref!r}) context")
        if ref not in produced:
            raise TiltfileError(f"docker_build({ref!r}): scripts/build-images does not produce it")
        built[ref] = True

    used = {image_name(image) for workload in found.values() for image in workload.images}
    for ref in built:
        if ref not in used:
            raise TiltfileError(f"image {ref!r} is built but no workload of the overlay runs it")
    for workload in found.values():
        for image in workload.images:
            if image_name(image) in produced and image_name(image) not in built:
                raise TiltfileError(
                    f"workload {workload.name!r} runs {image!r}, which the Tiltfile does not build"
                )


def check_resources(recorder, found):
    local_names = {arg(a, k, 0, "name") for a, k in recorder.named("local_resource")}
    resources = set(found) | local_names
    deps_of = {}
    forwards_of = {}
    for args, kwargs in recorder.named("k8s_resource"):
        name = arg(args, kwargs, 0, "workload")
        if name not in found:
            raise TiltfileError(
                f"k8s_resource({name!r}): no such workload in the kind overlay "
                f"(workloads: {', '.join(sorted(found))})"
            )
        for spec in kwargs.get("port_forwards", []) or []:
            local, container = parse_port_forward(spec)
            if container not in found[name].ports:
                raise TiltfileError(
                    f"k8s_resource({name!r}): port-forward {local}:{container} targets a port "
                    f"the workload does not declare (declared: {sorted(found[name].ports)})"
                )
            forwards_of.setdefault(name, []).append((local, container))
        deps_of[name] = list(kwargs.get("resource_deps", []) or [])
    for args, kwargs in recorder.named("local_resource"):
        deps_of[arg(args, kwargs, 0, "name")] = list(kwargs.get("resource_deps", []) or [])
    for name, deps in deps_of.items():
        for dep in deps:
            if dep not in resources:
                raise TiltfileError(f"resource {name!r}: resource_deps names unknown {dep!r}")

    nats = [w.name for w in found.values() if w.component == "nats"]
    if len(nats) != 1:
        raise TiltfileError(f"expected one NATS workload in the overlay, found {nats}")
    for workload in found.values():
        if workload.component in NATS_CLIENT_COMPONENTS and nats[0] not in deps_of.get(
            workload.name, []
        ):
            raise TiltfileError(
                f"resource {workload.name!r} connects to NATS but does not list "
                f"{nats[0]!r} in resource_deps"
            )
    return forwards_of, nats[0]


def check_demo_button(recorder, forwards_of, nats, env):
    buttons = [
        (args, kwargs)
        for args, kwargs in recorder.named("local_resource")
        if "elkctl -- job create" in str(arg(args, kwargs, 1, "cmd", ""))
    ]
    if not buttons:
        raise TiltfileError("no local_resource runs `elkctl job create` (the demo-job button)")
    for args, kwargs in buttons:
        name, command = arg(args, kwargs, 0, "name"), str(arg(args, kwargs, 1, "cmd"))
        if kwargs.get("auto_init", True) or kwargs.get("trigger_mode") != TRIGGER_MODE_MANUAL:
            raise TiltfileError(
                f"local_resource({name!r}) must be a button: auto_init=False, TRIGGER_MODE_MANUAL"
            )
        url = re.search(r"--nats-url nats://127\.0\.0\.1:(\d+)", command)
        if not url or (int(url.group(1)), 4222) not in forwards_of.get(nats, []):
            raise TiltfileError(
                f"local_resource({name!r}): --nats-url must be a port-forward of {nats!r} to 4222"
            )
        namespace = re.search(r"--namespace (\S+)", command)
        if not namespace or namespace.group(1) != env.get("ELK_NAMESPACE"):
            raise TiltfileError(
                f"local_resource({name!r}): --namespace must be the overlay's ELK_NAMESPACE "
                f"({env.get('ELK_NAMESPACE')!r})"
            )


def check(path, source):
    """Raises TiltfileError on the first mistake; returns a one-line summary."""
    recorder = evaluate(path, source)
    if not recorder.rendered:
        raise TiltfileError("the Tiltfile applies no kustomize() output with k8s_yaml")
    if len(recorder.named("k8s_yaml")) == 0:
        raise TiltfileError("kustomize() is rendered but never passed to k8s_yaml")
    found = workloads(recorder.rendered)
    check_images(recorder, found)
    forwards_of, nats = check_resources(recorder, found)
    check_demo_button(recorder, forwards_of, nats, elk_env(recorder.rendered))
    return (
        f"{len(recorder.calls)} Tilt calls, {len(found)} workloads, "
        f"{len(recorder.named('custom_build'))} images, "
        f"{sum(len(f) for f in forwards_of.values())} port-forwards"
    )


# Each seeded mistake: (what, text in the Tiltfile, replacement, words the rejection must contain).
SEEDED_MISTAKES = [
    ("syntax error", 'k8s_yaml(kustomize("deploy/k8s/overlays/kind"))',
     'k8s_yaml(kustomize("deploy/k8s/overlays/kind")', "parse error"),
    ("misspelled builtin", "k8s_yaml(", "k8s_yml(", "k8s_yml"),
    ("unknown workload", 'k8s_resource(\n    "prometheus"', 'k8s_resource(\n    "prometheus-server"',
     "no such workload"),
    ("undeclared port", "port_forward(16686, 16686", "port_forward(16686, 16687",
     "does not declare"),
    ("image the script does not build", '"elk-scaler": RUST_SOURCES', '"elk-autoscaler": RUST_SOURCES',
     "does not produce"),
    ("missing path", '"scripts/build-images",\n]', '"scripts/build-image",\n]', "does not exist"),
    ("wrong overlay", '"deploy/k8s/overlays/kind"', '"deploy/k8s/overlays/dev"', "does not exist"),
    ("services before NATS", 'resource_deps = ["nats", "jaeger"], labels', 'resource_deps = ["jaeger"], labels',
     "does not list"),
    ("unknown dependency", '"jaeger", "elk-assigner"]', '"jaeger", "elk-asigner"]', "unknown"),
    ("demo job on the wrong port", "NATS_LOCAL_PORT, ELK_NAMESPACE)", "4222, ELK_NAMESPACE)",
     "port-forward"),
    ("demo job in the wrong namespace", 'ELK_NAMESPACE = "default"', 'ELK_NAMESPACE = "demo"',
     "ELK_NAMESPACE"),
    ("button that runs on start", "auto_init = False,\n    trigger_mode = TRIGGER_MODE_MANUAL,\n    resource_deps = [\"elk-assigner\", \"elk-checksum-worker\"]",
     "auto_init = True,\n    trigger_mode = TRIGGER_MODE_MANUAL,\n    resource_deps = [\"elk-assigner\", \"elk-checksum-worker\"]",
     "must be a button"),
]


def self_test(path, source):
    print(f"clean: {check(path, source)}")
    failures = 0
    for what, old, new, expected in SEEDED_MISTAKES:
        if source.count(old) != 1:
            print(f"FAIL {what}: the seed text occurs {source.count(old)} times in {path}")
            failures += 1
            continue
        try:
            check(path, source.replace(old, new))
            print(f"FAIL {what}: the seeded mistake was accepted")
            failures += 1
        except TiltfileError as error:
            if expected not in str(error):
                print(f"FAIL {what}: rejected for another reason: {error}")
                failures += 1
            else:
                print(f"ok   {what}: {str(error).splitlines()[0]}")
    print(f"{len(SEEDED_MISTAKES) - failures} passed, {failures} failed")
    return failures == 0


def main(argv):
    test = "--self-test" in argv
    paths = [a for a in argv if not a.startswith("--")]
    path = paths[0] if paths else os.path.join(REPO, "Tiltfile")
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    if test:
        return 0 if self_test(path, source) else 1
    try:
        print(f"{os.path.relpath(path, REPO)}: ok ({check(path, source)})")
        return 0
    except TiltfileError as error:
        print(f"{os.path.relpath(path, REPO)}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
