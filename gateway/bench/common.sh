# Shared by gateway/bench/run.sh and gateway/bench/tcp.sh (sourced; needs ROOT, WORK and log).

wait_port() {
  local port=$1 i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $port did not open" >&2
  return 1
}

# utime + stime of a process and its children (nginx's workers).
cpu_ticks() {
  local p t=0
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# The release gateway and bench_config (unless SKIP_BUILD), and a PKI for east and west in
# $WORK/pki with each gateway's certificate and key in one combined.pem (HAProxy's form).
# Sets GW, BENCH_CONFIG, PKI.
build_and_pki() {
  if [[ -z ${SKIP_BUILD:-} ]]; then
    log "building (release): causeway-gateway, bench_config; causeway (certs)"
    cargo build --release -q -p causeway-gateway --bin causeway-gateway --example bench_config
    cargo build -q -p causeway-federator --bin causeway
  fi
  GW=$ROOT/target/release/causeway-gateway
  BENCH_CONFIG=$ROOT/target/release/examples/bench_config
  PKI=$WORK/pki
  # `causeway certs` from whichever build is there (the debug one is what the script builds).
  local causeway=$ROOT/target/debug/causeway
  [[ -x $causeway ]] || causeway=$ROOT/target/release/causeway
  "$causeway" certs --out "$PKI" --clusters east,west >/dev/null
  local c
  for c in east west; do
    cat "$PKI/$c/gateway.pem" "$PKI/$c/gateway.key" >"$PKI/$c/combined.pem"
  done
}
