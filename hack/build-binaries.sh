#!/usr/bin/env bash
# Build pinned upstream binaries for the local test cluster through the Go module proxy.
#
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl  (k8s.io/kubernetes)
#   etcd etcdctl                                                                      (go.etcd.io/etcd)
#   helm                                                                              (helm.sh/helm/v3)
#   weed (SeaweedFS: the test bed's S3 server, hack/s3)                               (github.com/seaweedfs/seaweedfs)
#   kube-router (firewall only: the test bed's NetworkPolicy implementation)          (github.com/cloudnativelabs/kube-router/v2)
#
# Output: $MLKUBE_BIN_DIR (default ~/.cache/mlkube/k8s-<ver>-etcd-<ver>-helm-<ver>/bin, see below).
# Already-built binaries are skipped. Usage: hack/build-binaries.sh [--print-bin-dir | TOOL...]
# with TOOL among kubernetes, etcd, helm, weed, kube-router (default: all; hack/s3 builds only weed,
# so hack/test can start the S3 server and its runtime tier while the cluster's binaries build).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
# SeaweedFS tags no Go-module versions; this pseudo-version is what the module proxy serves
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
# the only kube-router version the module proxy serves here (v2.2+ are not available); it runs
# in the test bed only, as a NetworkPolicy firewall on one node
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"

CACHE_ROOT="${MLKUBE_CACHE:-$HOME/.cache/mlkube}"
BIN_DIR="${MLKUBE_BIN_DIR:-$CACHE_ROOT/k8s-${K8S_VERSION}/bin}"
SRC_ROOT="$CACHE_ROOT/src"
# versions of etcd/helm/weed are recorded in the bin dir; a mismatch rebuilds that tool
if [[ "${1:-}" == "--print-bin-dir" ]]; then echo "$BIN_DIR"; exit 0; fi
TOOLS=(kubernetes etcd helm weed kube-router)
for tool in "$@"; do
  [[ " ${TOOLS[*]} " == *" $tool "* ]] || { echo "build-binaries: unknown tool '$tool' (one of: ${TOOLS[*]})" >&2; exit 2; }
done
ONLY="$*"
wanted() { [[ -z "$ONLY" || " $ONLY " == *" $1 "* ]]; }

export GOFLAGS="${GOFLAGS:--mod=mod}"
case " $GOFLAGS " in *" -mod="*) ;; *) GOFLAGS="$GOFLAGS -mod=mod" ;; esac
export GOFLAGS
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
# GOPROXY: keep the environment's / go env default.

command -v go >/dev/null || { echo "build-binaries: 'go' not found (need Go >= 1.26)" >&2; exit 1; }

START=$(date +%s)
log() { printf '[build-binaries +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }

mkdir -p "$BIN_DIR" "$SRC_ROOT"

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
stamp_ok() { # name version
  [[ -x "$BIN_DIR/$1" && "$(cat "$BIN_DIR/.$1.version" 2>/dev/null)" == "$2" ]]
}
stamp() { echo "$2" > "$BIN_DIR/.$1.version"; }

built_any=0

# ---------------------------------------------------------------- kubernetes
missing=()
for c in "${K8S_CMDS[@]}"; do stamp_ok "$c" "$K8S_VERSION" || missing+=("$c"); done
if ! wanted kubernetes; then
  :
elif (( ${#missing[@]} )); then
  built_any=1
  wd="$SRC_ROOT/k8s-$K8S_VERSION"
  mkdir -p "$wd"
  log "kubernetes $K8S_VERSION: preparing wrapper module in $wd"
  # fetch upstream go.mod to learn the staging modules (its replace lines point into ./staging,
  # which the module proxy cannot follow; we map each to the published v0.<minor>.<patch>)
  upstream_mod=$(cd "$wd" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [[ -f "$upstream_mod" ]] || { echo "build-binaries: could not download k8s.io/kubernetes@$K8S_VERSION go.mod" >&2; exit 1; }
  staging_ver="v0.${K8S_VERSION#v1.}"
  staging=$(grep -E '=>[[:space:]]*\./staging/' "$upstream_mod" | awk '{print $1}' | sort -u)
  [[ -n "$staging" ]] || { echo "build-binaries: no staging replaces found in $upstream_mod" >&2; exit 1; }
  if [[ ! -f "$wd/go.mod" ]] || ! grep -q "k8s.io/kubernetes $K8S_VERSION" "$wd/go.mod"; then
    {
      echo "module mlkube.local/k8s-build"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$upstream_mod")"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      for m in $staging; do echo "	$m => $m $staging_ver"; done
      echo ")"
    } > "$wd/go.mod"
    # keep upstream's exact dependency pins (MVS would otherwise be free to pick the same anyway,
    # but copying the require block makes the build match upstream's go.sum-tested set)
    awk '/^require \(/{f=1;next} f&&/^\)/{f=0} f' "$upstream_mod" | grep -v '^\s*//' | grep -vE '^\s*k8s\.io/(kubernetes)\s' \
      | awk 'NF>=2{print "require " $1 " " $2}' | grep -vE "require ($(echo $staging | tr ' ' '|')) " >> "$wd/go.mod" || true
    rm -f "$wd/go.sum"
  fi
  sum=$(cd "$wd" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"Sum": "\(.*\)",\?$/\1/p')
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  # gitCommit: the proxy does not expose the upstream commit; use the module checksum instead.
  commit=$(printf '%s' "$sum" | sha1sum | cut -c1-40)
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=$commit -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  pkgs=(); for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  log "kubernetes $K8S_VERSION: go build ${missing[*]} (the long part: ~9 min cold on 2 cores, ~13 min with etcd+helm)"
  t0=$(date +%s)
  tmpout="$BIN_DIR/.tmp-k8s"; rm -rf "$tmpout"; mkdir -p "$tmpout"
  (cd "$wd" && go build -trimpath -ldflags "$ld" -o "$tmpout/" "${pkgs[@]}")
  for c in "${missing[@]}"; do mv -f "$tmpout/$c" "$BIN_DIR/$c"; stamp "$c" "$K8S_VERSION"; done
  rm -rf "$tmpout"
  log "kubernetes: built ${missing[*]} in $(( $(date +%s) - t0 ))s"
else
  log "kubernetes $K8S_VERSION: all binaries present, skipping"
fi

# ---------------------------------------------------------------- etcd
missing=()
stamp_ok etcd "$ETCD_VERSION" || missing+=(etcd)
stamp_ok etcdctl "$ETCD_VERSION" || missing+=(etcdctl)
if ! wanted etcd; then
  :
elif (( ${#missing[@]} )); then
  built_any=1
  wd="$SRC_ROOT/etcd-$ETCD_VERSION"
  mkdir -p "$wd"
  # etcd's own go.mod files replace sibling modules with ../paths; as dependencies of a wrapper
  # module those replaces are ignored and the published $ETCD_VERSION siblings are used.
  cat > "$wd/go.mod" <<EOF
module mlkube.local/etcd-build

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
	go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  pkgs=(); for c in "${missing[@]}"; do
    case $c in etcd) pkgs+=(go.etcd.io/etcd/server/v3);; etcdctl) pkgs+=(go.etcd.io/etcd/etcdctl/v3);; esac
  done
  log "etcd $ETCD_VERSION: go build ${missing[*]}"
  t0=$(date +%s)
  tmpout="$BIN_DIR/.tmp-etcd"; rm -rf "$tmpout"; mkdir -p "$tmpout"
  for i in "${!missing[@]}"; do
    (cd "$wd" && go build -trimpath -ldflags "-s -w" -o "$tmpout/${missing[$i]}" "${pkgs[$i]}")
    mv -f "$tmpout/${missing[$i]}" "$BIN_DIR/${missing[$i]}"; stamp "${missing[$i]}" "$ETCD_VERSION"
  done
  rm -rf "$tmpout"
  log "etcd: built ${missing[*]} in $(( $(date +%s) - t0 ))s"
else
  log "etcd $ETCD_VERSION: present, skipping"
fi

# ---------------------------------------------------------------- helm
if ! wanted helm; then
  :
elif ! stamp_ok helm "$HELM_VERSION"; then
  built_any=1
  log "helm $HELM_VERSION: go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  t0=$(date +%s)
  tmpgobin="$BIN_DIR/.tmp-helm"; rm -rf "$tmpgobin"; mkdir -p "$tmpgobin"
  hv=helm.sh/helm/v3/internal/version
  (cd "$SRC_ROOT" && GOFLAGS="" GOBIN="$tmpgobin" go install -trimpath \
     -ldflags "-s -w -X $hv.version=$HELM_VERSION -X $hv.gitTreeState=clean" \
     "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  mv -f "$tmpgobin/helm" "$BIN_DIR/helm"; rm -rf "$tmpgobin"; stamp helm "$HELM_VERSION"
  log "helm: built in $(( $(date +%s) - t0 ))s"
else
  log "helm $HELM_VERSION: present, skipping"
fi

# ---------------------------------------------------------------- seaweedfs (weed)
if ! wanted weed; then
  :
elif ! stamp_ok weed "$SEAWEEDFS_VERSION"; then
  built_any=1
  wd="$SRC_ROOT/seaweedfs-$SEAWEEDFS_VERSION"
  mkdir -p "$wd"
  log "seaweedfs $SEAWEEDFS_VERSION: preparing wrapper module in $wd"
  # upstream's go.mod has replace lines, which `go install mod@version` refuses and which a
  # dependency's go.mod does not apply: repeat them (module-to-module ones) in a wrapper module
  upstream_mod=$(cd "$SRC_ROOT" && GOFLAGS="" go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" \
    | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [[ -f "$upstream_mod" ]] || { echo "build-binaries: could not download github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION go.mod" >&2; exit 1; }
  replaces=$(awk '/^[[:space:]]*\/\//{next} /^replace[[:space:]]*\(/{b=1;next} b&&/^\)/{b=0;next}
                  b||/^replace[[:space:]]/{sub(/^(replace)?[[:space:]]+/,""); print "replace " $0}' "$upstream_mod" \
    | grep -vE '=>[[:space:]]*(\.|/)' || true)
  if [[ ! -f "$wd/go.mod" ]] || ! grep -q "github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION" "$wd/go.mod"; then
    {
      echo "module mlkube.local/seaweedfs-build"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$upstream_mod")"
      echo
      echo "require github.com/seaweedfs/seaweedfs $SEAWEEDFS_VERSION"
      echo
      echo "$replaces"
    } > "$wd/go.mod"
    rm -f "$wd/go.sum"
  fi
  # `weed version` prints this commit: the pseudo-version's 12-hex suffix
  vp=github.com/seaweedfs/seaweedfs/weed/util/version
  log "seaweedfs: go build weed (~500 modules)"
  t0=$(date +%s)
  tmpout="$BIN_DIR/.tmp-weed"; rm -rf "$tmpout"; mkdir -p "$tmpout"
  (cd "$wd" && go build -trimpath -ldflags "-s -w -X $vp.COMMIT=${SEAWEEDFS_VERSION##*-}" \
     -o "$tmpout/weed" github.com/seaweedfs/seaweedfs/weed)
  mv -f "$tmpout/weed" "$BIN_DIR/weed"; rm -rf "$tmpout"; stamp weed "$SEAWEEDFS_VERSION"
  log "seaweedfs: built weed in $(( $(date +%s) - t0 ))s"
else
  log "seaweedfs $SEAWEEDFS_VERSION: present, skipping"
fi

# ---------------------------------------------------------------- kube-router
if ! wanted kube-router; then
  :
elif ! stamp_ok kube-router "$KUBE_ROUTER_VERSION"; then
  built_any=1
  # its go.mod has no replace lines: a plain `go install` at the tag, with upstream's version ldflags
  log "kube-router $KUBE_ROUTER_VERSION: go install github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
  t0=$(date +%s)
  tmpgobin="$BIN_DIR/.tmp-kube-router"; rm -rf "$tmpgobin"; mkdir -p "$tmpgobin"
  kv=github.com/cloudnativelabs/kube-router/v2/pkg/version
  (cd "$SRC_ROOT" && GOFLAGS="" GOBIN="$tmpgobin" go install -trimpath \
     -ldflags "-s -w -X $kv.Version=$KUBE_ROUTER_VERSION -X $kv.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
     "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION")
  mv -f "$tmpgobin/kube-router" "$BIN_DIR/kube-router"; rm -rf "$tmpgobin"; stamp kube-router "$KUBE_ROUTER_VERSION"
  log "kube-router: built in $(( $(date +%s) - t0 ))s"
else
  log "kube-router $KUBE_ROUTER_VERSION: present, skipping"
fi

total=$(( $(date +%s) - START ))
if (( built_any )); then
  log "done: build took ${total}s (cold means: empty Go caches); binaries in $BIN_DIR"
else
  log "done: everything cached (${total}s); binaries in $BIN_DIR"
fi
ls -la "$BIN_DIR" | sed 's/^/  /'
