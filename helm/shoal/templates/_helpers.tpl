{{/* Names and labels. */}}
{{- define "shoal.fullname" -}}
{{- printf "%s-shoal-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: shoal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Impossible combinations fail the install with a message (values.schema.json checks the types). */}}
{{- define "shoal.validate" -}}
{{- if and .Values.defaultRouter.enabled (not .Values.defaultRouter.pools) -}}
{{- fail "defaultRouter.enabled needs defaultRouter.pools: the ModelPools the router serves" -}}
{{- end -}}
{{- if and (not .Values.rbac.create) .Values.serviceAccount.create -}}
{{- fail "rbac.create=false with serviceAccount.create=true leaves the operator without permissions; bring your own serviceAccount.name" -}}
{{- end -}}
{{- if and .Values.operator.watchNamespaces (not (has .Release.Namespace .Values.operator.watchNamespaces)) .Values.defaultRouter.enabled -}}
{{- fail (printf "defaultRouter lives in %s, which operator.watchNamespaces does not include" .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/*
Namespaces where the operator may get and create Secrets (JSON list): rbac.secretNamespaces, else
the watched namespaces. Never cluster-wide.
*/}}
{{- define "shoal.secretNamespaces" -}}
{{- toJson (.Values.rbac.secretNamespaces | default .Values.operator.watchNamespaces | default list) -}}
{{- end }}

{{/*
"true" when every namespace the operator watches grants it Secrets (it then reports a missing
API-key Secret as SecretNotFound); "false" otherwise (pods wait for the Secret instead).
*/}}
{{- define "shoal.checkSecrets" -}}
{{- $granted := include "shoal.secretNamespaces" . | fromJsonArray -}}
{{- $check := gt (len .Values.operator.watchNamespaces) 0 -}}
{{- range .Values.operator.watchNamespaces -}}
{{- if not (has . $granted) -}}{{- $check = false -}}{{- end -}}
{{- end -}}
{{- $check -}}
{{- end }}
