{{/*
Names and labels shared by every template. With the release named "energetiscope" in namespace
"energetiscope", the names are those of deploy/base and its overlays, which
tests/e2e/test_helm_chart.py compares object by object.
*/}}

{{- define "energetiscope.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "energetiscope.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "energetiscope.webhookSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "energetiscope.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "energetiscope.tlsSecret" -}}
{{ .Values.certificates.secretName | default (printf "%s-webhook-tls" (include "energetiscope.fullname" .)) }}
{{- end -}}

{{- define "energetiscope.artifactsClaim" -}}
{{ .Values.model.pvc.claimName | default (printf "%s-artifacts" (include "energetiscope.fullname" .)) }}
{{- end -}}

{{/* The namespaces neither webhook sees: the configured ones and the release's own. */}}
{{- define "energetiscope.excludedNamespaces" -}}
{{ concat .Values.webhook.excludedNamespaces (list .Release.Namespace) | uniq | toJson }}
{{- end -}}

{{/* One webhook's clientConfig: the Service, or webhook.url; the caBundle per certificate mode. */}}
{{- define "energetiscope.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
clientConfig:
  {{- if $root.Values.webhook.url }}
  url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) $path | quote }}
  {{- else }}
  service:
    name: {{ include "energetiscope.fullname" $root }}-webhook
    namespace: {{ $root.Release.Namespace }}
    path: {{ $path }}
    port: 443
  {{- end }}
  {{- if eq $root.Values.certificates.mode "existingSecret" }}
  caBundle: {{ required "certificates.caBundle is required with certificates.mode=existingSecret" $root.Values.certificates.caBundle | quote }}
  {{- else }}
  caBundle: ""  # filled by `energetiscope certs bootstrap` or cert-manager's cainjector
  {{- end }}
{{- end -}}

{{- define "energetiscope.webhookAnnotations" -}}
{{- if eq .Values.certificates.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "energetiscope.fullname" . }}-webhook
{{- end }}
{{- end -}}

{{/* The container spec of `energetiscope certs bootstrap` (the install Job and the renewal CronJob). */}}
{{- define "energetiscope.certsPodSpec" -}}
serviceAccountName: {{ include "energetiscope.fullname" . }}-certs
restartPolicy: OnFailure
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile: {type: RuntimeDefault}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{ toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: certs
    image: {{ include "energetiscope.image" . }}
    {{- with .Values.image.pullPolicy }}
    imagePullPolicy: {{ . }}
    {{- end }}
    args: ["certs", "bootstrap", "--namespace", {{ .Release.Namespace | quote }},
           "--service", "{{ include "energetiscope.fullname" . }}-webhook",
           "--secret", {{ include "energetiscope.tlsSecret" . | quote }},
           "--mutating", {{ include "energetiscope.fullname" . | quote }},
           "--validating", {{ include "energetiscope.fullname" . | quote }}]
    resources:
      requests: {cpu: 50m, memory: 128Mi}
      limits: {memory: 256Mi}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: ["ALL"]}
{{- end -}}
