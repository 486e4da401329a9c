# shellcheck shell=bash disable=SC2034
# Shared settings for hack/cluster, hack/build-images, hack/build-binaries.sh (sourced, not run).

MLKUBE_REPO_ROOT="${MLKUBE_REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
MLKUBE_CACHE="${MLKUBE_CACHE:-$HOME/.cache/mlkube}"
K8S_VERSION="${K8S_VERSION:-v1.35.4}"
MLKUBE_BIN_DIR="${MLKUBE_BIN_DIR:-$MLKUBE_CACHE/k8s-${K8S_VERSION}/bin}"

# local cluster state (certs, etcd data, kubelet root, containerd root, logs, pid files)
CLUSTER_DIR="${MLKUBE_CLUSTER_DIR:-$MLKUBE_CACHE/cluster}"
CLUSTER_RUN="${MLKUBE_CLUSTER_RUN:-/run/mlkube}"
CLUSTER_LOGS="$CLUSTER_DIR/logs"
CLUSTER_KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
CONTAINERD_SOCK="$CLUSTER_RUN/containerd/containerd.sock"

# kind (used instead when a Docker engine answers)
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KIND_CLUSTER_NAME="${KIND_CLUSTER_NAME:-mlkube}"
KIND_KUBECONFIG="$MLKUBE_CACHE/kind-${KIND_CLUSTER_NAME}.kubeconfig"

PAUSE_IMAGE="registry.k8s.io/pause:3.10"

# the machine's primary IPv4 address: the local cluster's node IP, which its pods reach too
mlkube_node_ip() {
  local ip
  ip=$(ip -4 -o addr show scope global 2>/dev/null | awk '{split($4,a,"/"); print a[1]; exit}')
  [[ -n "$ip" ]] || { echo "no global IPv4 address on this machine (needed as the node IP)" >&2; return 1; }
  echo "$ip"
}

mlkube_docker_works() {
  command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

# the version of the python project, from pyproject.toml ([project] version = "x.y.z")
mlkube_project_version() {
  sed -n '/^\[project\]/,/^\[/{s/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p}' \
    "$MLKUBE_REPO_ROOT/pyproject.toml" | head -1
}

mlkube_ctr() {
  ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"
}
