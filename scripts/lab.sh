#!/usr/bin/env bash
# The lab command: makes sure the build's and the lab's prerequisites work (scripts/setup.sh:
# protoc, etcd, dig, nftables, ...; it installs or repairs what does not), then builds and runs the
# lab binary with the arguments given.
#
#   bash scripts/lab.sh up --drill      # start the lab, run a failover drill, print the report
#   bash scripts/lab.sh exec north -- curl -s http://echo.demo.svc.clusterset.local/
#   bash scripts/lab.sh status
#   bash scripts/lab.sh down
#
# Same as `cargo run -p causeway-e2e --bin causeway-lab -- ARGS` once setup has run (docs/lab.md).
set -euo pipefail

cd "$(dirname "$0")/.."

# Sourced so that a fallback's CAUSEWAY_ETCD_BIN or PROTOC reaches cargo and the lab.
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

exec cargo run -p causeway-e2e --bin causeway-lab -- "$@"
