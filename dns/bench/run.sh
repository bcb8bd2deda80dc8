#!/usr/bin/env bash
# DNS benchmark (not a test): dnsperf against Causeway DNS, Knot and NSD, same names, same
# machine, one run, one worker each. Prints queries per second, latency percentiles and the
# ratios. Needs the Debian packages dnsperf, knot and nsd (installed if missing).
#
#   dns/bench/run.sh [seconds per run, default 10] [fixed rate for the latency runs, default 20000]
#                    [rounds, default 3]
#
# Each server runs on CPU 0 and dnsperf on CPU 1 (when there are two CPUs or more). CPU 0 because
# knotd pins its UDP worker to CPU 0 by itself, whatever affinity it was started with; the script
# prints every knotd thread's affinity to show it.
# Two kinds of runs per server:
#   - throughput: dnsperf with 100 queries outstanding, as fast as the server answers;
#   - latency: dnsperf at a fixed rate (-Q), every response's latency recorded (-v), p50/p99/p99.9,
#     and the share of CPU time the hypervisor took from this VM meanwhile (steal, /proc/stat).
# The servers take turns, round after round, so that load from elsewhere on the machine falls on
# both alike; the summary is the median of the rounds, every round is printed too.
set -euo pipefail

SECS=${1:-10}
RATE=${2:-20000}
ROUNDS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
CW_PORT=${CW_PORT:-15353}
KNOT_PORT=${KNOT_PORT:-15354}
NSD_PORT=${NSD_PORT:-15355}
SERVER_PID=""
trap 'if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1 || apt-get install -y "$2" >/dev/null; }
need dnsperf dnsperf
need knotd knot
need nsd nsd

if [ "$(nproc)" -ge 2 ]; then SRV_CPU="taskset -c 0"; PERF_CPU="taskset -c 1"; else SRV_CPU=""; PERF_CPU=""; fi

echo "== building (release)"
(cd "$ROOT" && cargo build --release -q -p causeway-dns --example bench_server)
BIN="$ROOT/target/release/examples/bench_server"
"$BIN" files "$WORK/clusterset.local.zone" "$WORK/queries.txt"

cat > "$WORK/knot.conf" <<CONF
server:
    listen: 127.0.0.1@$KNOT_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    rundir: "$WORK"
log:
  - target: stderr
    any: warning
database:
    storage: "$WORK"
template:
  - id: default
    storage: "$WORK"
    semantic-checks: off
zone:
  - domain: clusterset.local
    file: "$WORK/clusterset.local.zone"
CONF

cat > "$WORK/nsd.conf" <<CONF
server:
    ip-address: 127.0.0.1@$NSD_PORT
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "$WORK"
    pidfile: "$WORK/nsd.pid"
    xfrdfile: "$WORK/xfrd.state"
    zonelistfile: "$WORK/zone.list"
    database: ""
    logfile: "$WORK/nsd.log"
    verbosity: 0
    # Debian's NSD has response rate limiting on (200 answers a second per source): off, as
    # the other two have none.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: clusterset.local
    zonefile: "$WORK/clusterset.local.zone"
CONF

wait_ready() { # port
    for _ in $(seq 1 100); do
        if dig @127.0.0.1 -p "$1" +tries=1 +time=1 +short dns-version.clusterset.local TXT 2>/dev/null | grep -q 1.0.0; then return 0; fi
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2; return 1
}

check_same_answers() { # port: print a digest of the answers to a sample of the query file
    head -n 200 "$WORK/queries.txt" | while read -r name type; do
        dig @127.0.0.1 -p "$1" +norecurse +tries=1 +time=1 +noall +answer +comments "$name" "$type" \
            | awk '/status:/ {print $6} !/^;/ && NF {print $1, $4, $5, $6, $7, $8}'
    done | md5sum | cut -d' ' -f1
}

throughput() { # port label
    $PERF_CPU dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$SECS" -c 1 -T 1 -q 100 \
        > "$WORK/$2.tput" 2>&1
    awk '/Queries per second/ {print $4}' "$WORK/$2.tput"
}

cpu_ticks() { # "steal total" of all CPUs, from /proc/stat
    awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat
}

steal_pct() { # "steal total" before, after -> percent of CPU time the hypervisor took
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.1f", 100 * (y[1] - x[1]) / d; else print "-" }'
}

latency() { # port label -> "p50 p99 p99.9 lost steal%" in ms
    local before after
    before=$(cpu_ticks)
    $PERF_CPU dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$SECS" -c 1 -T 1 -q 100 \
        -Q "$RATE" -v > "$WORK/$2.lat" 2>&1
    after=$(cpu_ticks)
    awk '$1 == ">" && $2 != "T" {print $NF}' "$WORK/$2.lat" | sort -g > "$WORK/$2.sorted"
    local n lost steal
    steal=$(steal_pct "$before" "$after")
    n=$(wc -l < "$WORK/$2.sorted")
    lost=$(awk '/Queries lost/ {print $3}' "$WORK/$2.lat")
    awk -v n="$n" -v lost="$lost" -v steal="$steal" '
        { v[NR] = $1 }
        END {
            if (n == 0) { print "- - - " lost " " steal; exit }
            i50 = int(n * 0.50); if (i50 < 1) i50 = 1
            i99 = int(n * 0.99); if (i99 < 1) i99 = 1
            i999 = int(n * 0.999); if (i999 < 1) i999 = 1
            printf "%.3f %.3f %.3f %s %s\n", v[i50] * 1000, v[i99] * 1000, v[i999] * 1000, lost, steal
        }' "$WORK/$2.sorted"
}

run_server() { # label command...
    local label=$1; shift
    $SRV_CPU "$@" > "$WORK/$label.server.log" 2>&1 &
    SERVER_PID=$!
}

stop_server() {
    kill -INT "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

echo "== machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(dnsperf -h 2>&1 | grep -m1 Version), knotd $(knotd -V | awk '{print $NF}'), $(nsd -v 2>&1 | head -n1)"

start_causeway() { run_server causeway "$BIN" serve "127.0.0.1:$CW_PORT"; wait_ready "$CW_PORT"; }
start_knot() { run_server knot knotd -c "$WORK/knot.conf"; wait_ready "$KNOT_PORT"; }
# -d: in the foreground, as the other two; one server process (server-count 1).
start_nsd() { run_server nsd nsd -d -c "$WORK/nsd.conf"; wait_ready "$NSD_PORT"; }

start_causeway; CW_DIGEST=$(check_same_answers "$CW_PORT"); stop_server
start_knot; KNOT_DIGEST=$(check_same_answers "$KNOT_PORT")
echo "knotd threads: $(for t in /proc/"$SERVER_PID"/task/*; do printf '%s(cpu %s) ' "$(cat "$t/comm")" "$(taskset -p -c "$(basename "$t")" | awk '{print $NF}')"; done)"
stop_server
start_nsd; NSD_DIGEST=$(check_same_answers "$NSD_PORT"); stop_server
if [ "$CW_DIGEST" = "$KNOT_DIGEST" ]; then SAME="yes"; else SAME="NO ($CW_DIGEST vs $KNOT_DIGEST)"; fi
echo "same answers to the first 200 queries (causeway, knot): $SAME"
if [ "$CW_DIGEST" = "$NSD_DIGEST" ]; then SAME="yes"; else SAME="NO ($CW_DIGEST vs $NSD_DIGEST)"; fi
echo "same answers to the first 200 queries (causeway, nsd): $SAME"

: > "$WORK/rounds"
printf "%-6s %-14s %12s %10s %10s %10s %14s %8s\n" round server "qps(max)" "p50 ms" "p99 ms" "p99.9 ms" "lost@$RATE/s" "steal %"
for round in $(seq 1 "$ROUNDS"); do
    for server in causeway knot nsd; do
        case $server in
            causeway) start_causeway; port=$CW_PORT ;;
            knot) start_knot; port=$KNOT_PORT ;;
            nsd) start_nsd; port=$NSD_PORT ;;
        esac
        qps=$(throughput "$port" "$server")
        read -r p50 p99 p999 lost steal < <(latency "$port" "$server")
        tlost=$(awk '/Queries lost/ {print $3}' "$WORK/$server.tput")
        stop_server
        echo "$server $qps $p50 $p99 $p999 $lost $tlost" >> "$WORK/rounds"
        printf "%-6s %-14s %12.0f %10s %10s %10s %14s %8s\n" "$round" "$server" "$qps" "$p50" "$p99" "$p999" "$lost" "$steal"
    done
done

median() { # server column
    awk -v s="$1" -v c="$2" '$1 == s {print $c}' "$WORK/rounds" | sort -g \
        | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

echo
echo "median of $ROUNDS rounds, $SECS s each, load average now $(cut -d' ' -f1-3 /proc/loadavg):"
printf "%-14s %12s %10s %10s %10s\n" server "qps(max)" "p50 ms" "p99 ms" "p99.9 ms"
for server in causeway knot nsd; do
    printf "%-14s %12.0f %10s %10s %10s\n" "$server" "$(median "$server" 2)" "$(median "$server" 3)" "$(median "$server" 4)" "$(median "$server" 5)"
done
for peer in knot nsd; do
    awk -v a="$(median causeway 2)" -v b="$(median $peer 2)" -v pa="$(median causeway 4)" -v pb="$(median $peer 4)" -v p="$peer" \
        'BEGIN { if (b > 0 && pb > 0) printf "causeway/%s (medians): qps %.2fx, p99 %.2fx (lower is better)\n", p, a / b, pa / pb }'
done
echo "queries lost in all runs: causeway $(awk '$1 == "causeway" {s += $6 + $7} END {print s + 0}' "$WORK/rounds"), knot $(awk '$1 == "knot" {s += $6 + $7} END {print s + 0}' "$WORK/rounds"), nsd $(awk '$1 == "nsd" {s += $6 + $7} END {print s + 0}' "$WORK/rounds")"
