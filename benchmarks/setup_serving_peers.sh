#!/usr/bin/env bash
# Create one venv per serving peer for benchmarks/serving_benchmark.py (idempotent).
# Usage: benchmarks/setup_serving_peers.sh [bentoml|mlserver|kserve|starlette ...]
# The package groups are the [name] sections of benchmarks/requirements-serving.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
requirements="$here/requirements-serving.txt"
python="${PYTHON:-python3.11}"

section() {  # print the requirement lines of one [name] section
  awk -v want="[$1]" '
    /^# \[/ { current = $2; next }
    /^#/ || NF == 0 { next }
    current == want { print }
  ' "$requirements"
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(bentoml mlserver kserve starlette)
for peer in "${peers[@]}"; do
  venv="$root/.venv-bench-$peer"
  marker="$venv/.installed"
  if [ -f "$marker" ] && cmp -s "$marker" <(section "$peer"; section all); then
    echo "== $peer: up to date ($venv)"
    continue
  fi
  echo "== $peer: installing into $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  # shellcheck disable=SC2046
  "$venv/bin/pip" install --quiet $(section "$peer") $(section all)
  { section "$peer"; section all; } > "$marker"
  echo "== $peer: done"
done
