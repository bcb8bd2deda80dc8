{{/*
Names. The ServiceAccounts are fixed (causeway-federator, causeway-gateway): the SPIFFE IDs in the
certificates name them (docs/certificates.md), so they cannot follow the release name.
*/}}
{{- define "causeway.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "causeway.cluster" -}}
{{- $c := default .Release.Name .Values.cluster -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $c) -}}
{{- fail (printf "cluster %q (from .Values.cluster or the release name) must be an RFC 1123 label: lower case letters, digits and '-', at most 63" $c) -}}
{{- end -}}
{{- $c -}}
{{- end -}}

{{- define "causeway.trustDomain" -}}
{{- default (printf "%s.causeway.mesh" (include "causeway.cluster" .)) .Values.trustDomain -}}
{{- end -}}

{{- define "causeway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: causeway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
causeway.io/cluster: {{ include "causeway.cluster" . }}
{{- end -}}

{{- define "causeway.federator.selector" -}}
app.kubernetes.io/name: causeway-federator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "causeway.gateway.selector" -}}
app.kubernetes.io/name: causeway-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "causeway.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Secret and ConfigMap names of the certificates (docs/helm.md). */}}
{{- define "causeway.gateway.tlsSecret" -}}causeway-gateway-tls{{- end -}}
{{- define "causeway.federator.tlsSecret" -}}causeway-federator-tls{{- end -}}
{{- define "causeway.trustBundle" -}}
{{- default "causeway-trust-bundle" .Values.certManager.trustBundleConfigMap -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root, no capabilities, RuntimeDefault seccomp. */}}
{{- define "causeway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "causeway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* The trust bundle volume: a ConfigMap, or the ca.crt of a cert-manager Secret. */}}
{{- define "causeway.trustVolume" -}}
- name: trust
{{- if and .root.Values.certManager.enabled (not .root.Values.certManager.trustBundleConfigMap) }}
  secret:
    secretName: {{ .secret }}
    items:
      - key: ca.crt
        path: bundle.pem
{{- else }}
  configMap:
    name: {{ include "causeway.trustBundle" .root }}
    items:
      - key: bundle.pem
        path: bundle.pem
{{- end }}
{{- end -}}
