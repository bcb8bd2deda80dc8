#!/usr/bin/env bash
# Opaque TCP throughput through two gateways (issue 17, docs/benchmarks.md):
#
#   iperf3 client -> A (a TCP port of the import) -> mTLS -> B -> iperf3 server
#
# for causeway-gateway (A's gateway port for `sink.bench`, carried to B in an HTTP/2 stream of the
# pooled mTLS connection) and HAProxy in TCP mode (TLS between A and B, verify required), and
# `direct` (the client straight to the server: this machine's limit). For each: Gbit/s received
# by the server over $SECS s with $STREAMS parallel streams, the CPU-seconds of A+B, and the
# gigabytes carried per proxy CPU-second. Prints the ratios to HAProxy.
#
# Needs Debian's iperf3 and haproxy (installed if missing), a release build of causeway-gateway
# and its bench_config example, `causeway certs` (causeway-federator).
#
# Environment: SECS (10), STREAMS (1), PROXIES ("direct causeway haproxy"), SKIP_BUILD.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECS=${SECS:-10}
STREAMS=${STREAMS:-1}
PROXIES=${PROXIES:-direct causeway haproxy}
WORK=$(mktemp -d /tmp/causeway-tcp-bench.XXXXXX)

P_SERVER=18201 # iperf3 server
P_A=18211      # A: the client-facing TCP port
P_A_PEER=18443
P_B=18444      # B: mTLS from A
P_A_ADMIN=18901
P_B_ADMIN=18902

CLK_TCK=$(getconf CLK_TCK)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[tcp-bench] $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || apt-get install -y "$2" >/dev/null; }
need iperf3 iperf3
need haproxy haproxy

# shellcheck source=gateway/bench/common.sh
source "$ROOT/gateway/bench/common.sh"

build_and_pki

iperf3 -s -p $P_SERVER >"$WORK/iperf-server.log" 2>&1 &
pids+=($!)
wait_port $P_SERVER

start_direct() { A_PID=""; B_PID=""; TARGET=$P_SERVER; }

start_causeway() {
  local d=$WORK/causeway
  mkdir -p "$d"
  "$BENCH_CONFIG" "$d" "$PKI/bundle.pem" "127.0.0.1:$P_A_PEER" "127.0.0.1:$P_B" \
    127.0.0.1:18080 1 $P_A "127.0.0.1:$P_SERVER"
  RUST_LOG=warn "$GW" --cluster west --cert "$PKI/west/gateway.pem" --key "$PKI/west/gateway.key" \
    --trust-bundle "$PKI/bundle.pem" --config-file "$d/b.pb" --vip-listen-ip 127.0.0.2 \
    --egress-listen 127.0.0.1:18002 --peer-listen 127.0.0.1:$P_B --admin-listen 127.0.0.1:$P_B_ADMIN \
    2>"$d/b.log" &
  B_PID=$!
  RUST_LOG=warn "$GW" --cluster east --cert "$PKI/east/gateway.pem" --key "$PKI/east/gateway.key" \
    --trust-bundle "$PKI/bundle.pem" --config-file "$d/a.pb" --vip-listen-ip 127.0.0.1 \
    --egress-listen 127.0.0.1:18001 --peer-listen 127.0.0.1:$P_A_PEER --admin-listen 127.0.0.1:$P_A_ADMIN \
    2>"$d/a.log" &
  A_PID=$!
  TARGET=$P_A
}

start_haproxy() {
  local d=$WORK/haproxy
  mkdir -p "$d"
  local common="global
  nbthread 2
  maxconn 4000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s"
  cat >"$d/a.cfg" <<EOF
$common
frontend tcp_in
  bind 127.0.0.1:$P_A
  default_backend b
backend b
  server b 127.0.0.1:$P_B ssl crt $PKI/east/combined.pem ca-file $PKI/bundle.pem verify required
EOF
  cat >"$d/b.cfg" <<EOF
$common
frontend ingress
  bind 127.0.0.1:$P_B ssl crt $PKI/west/combined.pem ca-file $PKI/bundle.pem verify required
  default_backend s
backend s
  server s 127.0.0.1:$P_SERVER
EOF
  haproxy -f "$d/b.cfg" -db >"$d/b.log" 2>&1 &
  B_PID=$!
  haproxy -f "$d/a.cfg" -db >"$d/a.log" 2>&1 &
  A_PID=$!
  TARGET=$P_A
}

results=()
for proxy in $PROXIES; do
  log "=== $proxy ==="
  "start_$proxy"
  if [[ -n $A_PID ]]; then
    pids+=("$A_PID" "$B_PID")
    wait_port $P_B
  fi
  wait_port "$TARGET"
  # Through end to end before measuring (the gateways take their config at start).
  ok=""
  for _ in $(seq 1 50); do
    if iperf3 -c 127.0.0.1 -p "$TARGET" -t 1 -J >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [[ -n $ok ]] || { log "$proxy: iperf3 does not get through"; exit 1; }
  ticks() { if [[ -z $A_PID ]]; then echo 0; else echo $(($(cpu_ticks "$A_PID") + $(cpu_ticks "$B_PID"))); fi; }
  cpu0=$(ticks)
  iperf3 -c 127.0.0.1 -p "$TARGET" -t "$SECS" -P "$STREAMS" -J >"$WORK/$proxy.json"
  cpu1=$(ticks)
  read -r gbits bytes < <(python3 -c '
import json, sys
end = json.load(open(sys.argv[1]))["end"]["sum_received"]
print("%.2f %d" % (end["bits_per_second"] / 1e9, int(end["bytes"])))' "$WORK/$proxy.json")
  cpu_s=$(awk -v t=$((cpu1 - cpu0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}')
  gb_per_cpu_s=$(awk -v b="$bytes" -v c="$cpu_s" 'BEGIN {printf "%.2f", (c > 0) ? b / 1e9 / c : 0}')
  results+=("$(printf '%-9s %8s %12s %12s' "$proxy" "$gbits" "$cpu_s" "$gb_per_cpu_s")")
  log "$proxy: $gbits Gbit/s, CPU $cpu_s s, $gb_per_cpu_s GB per proxy CPU-second"
  if [[ -n $A_PID ]]; then
    kill "$A_PID" "$B_PID" 2>/dev/null || true
    wait "$A_PID" "$B_PID" 2>/dev/null || true
  fi
done

echo
echo "iperf3 -> A -> mTLS -> B -> iperf3 -s; $STREAMS stream(s) for $SECS s; direct = no proxy; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-9s %8s %12s %12s\n' proxy "Gbit/s" "cpu_s(A+B)" "GB/cpu_s"
printf '%s\n' "${results[@]}"
ours=$(printf '%s\n' "${results[@]}" | awk '$1 == "causeway"')
theirs=$(printf '%s\n' "${results[@]}" | awk '$1 == "haproxy"')
if [[ -n $ours && -n $theirs ]]; then
  awk -v a="$ours" -v b="$theirs" 'BEGIN { split(a, x, " +"); split(b, y, " +");
    printf "causeway / haproxy: Gbit/s %.2fx, GB per CPU-second %.2fx\n", x[2] / y[2], x[4] / y[4] }'
fi
