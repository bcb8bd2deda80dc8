#!/usr/bin/env bash
# Fails when the dependency tree holds two incompatible versions of a network-stack crate
# (STYLE.md: one version of each major crate: hyper 1, http 1, h2 0.4, rustls 0.23, tonic 0.14,
# prost 0.14). "Incompatible" is semver's: a different major version, or for 0.x a different minor.
# Two patch releases of one line cannot both be in a lock file, so they never show up here.
#
# Usage: scripts/check-deps.sh [crate...]   (default: the crates below)
set -euo pipefail

cd "$(dirname "$0")/.."

crates=("$@")
if [[ ${#crates[@]} -eq 0 ]]; then
  crates=(hyper http h2 rustls tonic prost)
fi

# Every package in the build graph (normal and build edges: what ships), one "name vX.Y.Z" a line.
tree=$(cargo tree --workspace --edges normal,build --prefix none --format '{p}' |
  sed -e 's/ (\*)$//' -e 's/ (proc-macro)$//' | sort -u)

# semver compatibility line: 1.2.3 -> 1, 0.4.20 -> 0.4, 0.0.3 -> 0.0.3
compat() {
  local v=$1 major minor patch
  IFS=. read -r major minor patch <<<"${v%%[-+]*}"
  if [[ $major != 0 ]]; then
    echo "$major"
  elif [[ $minor != 0 ]]; then
    echo "0.$minor"
  else
    echo "0.0.$patch"
  fi
}

failed=0
for crate in "${crates[@]}"; do
  versions=$(awk -v c="$crate" '$1 == c { sub(/^v/, "", $2); print $2 }' <<<"$tree" | sort -uV)
  [[ -z $versions ]] && continue
  lines=$(while read -r v; do compat "$v"; done <<<"$versions" | sort -u)
  if [[ $(wc -l <<<"$lines") -gt 1 ]]; then
    failed=1
    echo "check-deps: $crate is in the tree in incompatible versions: $(tr '\n' ' ' <<<"$versions")"
    while read -r v; do
      echo "  $crate $v is pulled in by:"
      cargo tree --workspace --edges normal,build --invert "$crate@$v" --depth 1 --prefix none |
        sed -e "/^$crate v$v\( \|\$\)/d" -e '/^$/d' -e 's/^/    /' | sort -u
    done <<<"$versions"
  fi
done

if [[ $failed -ne 0 ]]; then
  echo "check-deps: FAILED; align the versions above (see STYLE.md, Dependencies)"
  exit 1
fi
echo "check-deps: one version line each of ${crates[*]}"
