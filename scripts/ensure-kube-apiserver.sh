# Sourced (or run) by scripts/test: makes sure a real kube-apiserver and etcd exist for the
# scaler's Kubernetes tests (services/scaler/tests/kube_actuation.rs), and exports where they are.
#
#   KUBE_APISERVER_BIN  kube-apiserver 1.20.2, built from Debian bookworm's `kubernetes` source
#                       package (no Debian binary package ships it) with the fix the recipe in
#                       docs/deploy.md needs (Debian's reflect2 1.0.2 swapped in: the vendored
#                       1.0.1 crashes on Go >= 1.18). Built once (~5 min on 2 cores) and cached,
#                       xz-compressed (~18 MB), outside the clone:
#                       ${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/kube-apiserver/
#   ETCD_BIN            Debian `etcd-server` (3.4)
#
# Nothing is done when KUBE_APISERVER_BIN already names an executable. Without root and apt-get
# (or when the build fails) nothing is exported: the tests then fail under CI and skip elsewhere.

ensure_kube_apiserver() {
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/kube-apiserver"
  local version=1.20.2
  local packed="$cache/kube-apiserver-$version.xz"
  local binary="$cache/kube-apiserver-$version"
  local apt_ok=0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then apt_ok=1; fi

  if ! command -v etcd >/dev/null 2>&1 && [ "$apt_ok" = 1 ]; then
    echo "ensure-kube-apiserver: installing etcd (Debian etcd-server)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >&2; }
  fi
  if command -v etcd >/dev/null 2>&1; then
    ETCD_BIN=$(command -v etcd)
    export ETCD_BIN
  fi

  if [ -n "${KUBE_APISERVER_BIN:-}" ] && [ -x "$KUBE_APISERVER_BIN" ]; then return 0; fi
  if [ ! -x "$binary" ] && [ -f "$packed" ]; then
    xz -dc "$packed" >"$binary.tmp" && chmod +x "$binary.tmp" && mv "$binary.tmp" "$binary"
  fi
  if [ ! -x "$binary" ]; then
    if [ "$apt_ok" != 1 ]; then
      echo "ensure-kube-apiserver: no cached kube-apiserver and cannot build one here (needs root and apt-get)" >&2
      return 0
    fi
    build_kube_apiserver "$cache" "$version" || {
      echo "ensure-kube-apiserver: the build failed; the Kubernetes tests cannot run" >&2
      return 0
    }
  fi
  KUBE_APISERVER_BIN="$binary"
  export KUBE_APISERVER_BIN
}

# Builds kube-apiserver from Debian's source package in a scratch directory (removed afterwards,
# the build tree is ~1.2 GB) and caches the binary, plain and xz-compressed.
build_kube_apiserver() { # <cache dir> <version>
  local cache=$1 version=$2
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/elk-kapi-build.XXXXXX")
  echo "ensure-kube-apiserver: building kube-apiserver $version from Debian's source (~5 min, once; log: $work.log)" >&2
  (
    set -euo pipefail
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      golang-go rsync jq golang-github-modern-go-reflect2-dev xz-utils \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             golang-go rsync jq golang-github-modern-go-reflect2-dev xz-utils; }
    # A private source list: /etc/apt stays untouched.
    mkdir -p "$work/apt/lists/partial"
    echo 'deb-src http://deb.debian.org/debian bookworm main' >"$work/apt/sources.list"
    local options=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                   -o "Dir::State::Lists=$work/apt/lists")
    apt-get "${options[@]}" update -qq
    (cd "$work" && apt-get "${options[@]}" source --download-only kubernetes)
    tar xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
    local tree="$work/kubernetes-$version"
    local reflect2="$tree/vendor/github.com/modern-go/reflect2"
    rm -rf "$reflect2" && mkdir "$reflect2"
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$reflect2/"
    rm -f "$reflect2"/*_test.go
    # GOPATH mode, as Debian's rules do (the generated OpenAPI files only come from `make`).
    mkdir -p "$tree/.go/src/k8s.io" && ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
    (cd "$tree" && env GOPATH="$tree/.go" CGO_ENABLED=0 HOME="$work/home" make WHAT=cmd/kube-apiserver)
    mkdir -p "$cache"
    xz -T0 -6 -c "$tree/_output/bin/kube-apiserver" >"$cache/kube-apiserver-$version.xz.tmp"
    mv "$cache/kube-apiserver-$version.xz.tmp" "$cache/kube-apiserver-$version.xz"
    cp "$tree/_output/bin/kube-apiserver" "$cache/kube-apiserver-$version.tmp"
    chmod +x "$cache/kube-apiserver-$version.tmp"
    mv "$cache/kube-apiserver-$version.tmp" "$cache/kube-apiserver-$version"
  ) >"$work.log" 2>&1
  local status=$?
  rm -rf "$work"
  if [ "$status" = 0 ]; then rm -f "$work.log"; else tail -20 "$work.log" >&2; fi
  return "$status"
}

ensure_kube_apiserver
