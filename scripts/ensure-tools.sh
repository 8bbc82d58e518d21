# Sourced by scripts/test and scripts/validate-deploy: makes sure the Debian tools the
# observability checks run are installed, and exports where they are.
#
#   promtool  (Debian `prometheus`, 2.42)  `promtool check metrics` on every live /metrics
#             (integration-tests/tests/observability.rs), `promtool check config|rules` and
#             `promtool test rules` on deploy/ (scripts/validate-deploy)      -> PROMTOOL
#   chromium  (Debian `chromium`)          the status page rendered headless against a live
#             stack (integration-tests/tests/observability.rs)                 -> CHROMIUM
#
# Installed with apt-get when missing (root only; ~15 s and ~25 s). Without them the tests fail
# under CI (`CI` set: .ci/run sets it) and skip the tool's part with a warning elsewhere.

ensure_debian_tool() { # <command> <package>...
  local command=$1
  shift
  command -v "$command" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "ensure-tools: $command missing and cannot be installed here (needs root and apt-get: $*)" >&2
    return 0
  fi
  echo "ensure-tools: installing $command (Debian $*)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; }
}

ensure_debian_tool promtool prometheus
ensure_debian_tool chromium chromium
if command -v promtool >/dev/null 2>&1; then
  PROMTOOL=$(command -v promtool)
  export PROMTOOL
fi
if command -v chromium >/dev/null 2>&1; then
  CHROMIUM=$(command -v chromium)
  export CHROMIUM
fi
