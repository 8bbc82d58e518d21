# Sourced by scripts/build-images and scripts/check-nats-cluster: picks the container engine and
# exports ENGINE (docker or podman).
#
# docker when a Docker engine answers; otherwise podman, installed from Debian when missing and
# configured with settings verified on the project's machines (runc, because crun fails on hybrid
# cgroups; cgroupfs; file events; explicit ulimits, as the default ones need CAP_SYS_RESOURCE;
# vfs storage, which works on any filesystem), its images under
# ${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/podman, outside the clone.
# ELK_IMAGE_ENGINE=docker|podman forces one.

engine_die() {
  echo "container-engine: $*" >&2
  exit 1
}

setup_podman() {
  local packages="podman buildah runc catatonit"
  if ! command -v podman >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
      || engine_die "no Docker engine and no podman; install podman (Debian: $packages)"
    echo "installing podman from Debian" >&2
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y --no-install-recommends $packages >&2 \
      || { apt-get update >&2 && apt-get install -y --no-install-recommends $packages >&2; }
  fi
  local dir=${XDG_CACHE_HOME:-$HOME/.cache}/elk-coordinator/podman
  mkdir -p "$dir/root"
  cat > "$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat > "$dir/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$dir/root"
runroot = "${TMPDIR:-/tmp}/elk-coordinator-podman-run-$(id -u)"
EOF
  export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf
}

case ${ELK_IMAGE_ENGINE:-} in
  docker | podman) ENGINE=$ELK_IMAGE_ENGINE ;;
  "")
    if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
      ENGINE=docker
    else
      ENGINE=podman
    fi
    ;;
  *) engine_die "ELK_IMAGE_ENGINE must be docker or podman, not $ELK_IMAGE_ENGINE" ;;
esac
[ "$ENGINE" = podman ] && setup_podman
export ENGINE
echo "container engine: $ENGINE ($($ENGINE --version 2>/dev/null | head -n1))" >&2
