{{- define "rectrain-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rectrain-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "rectrain-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "rectrain-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects are shared by every release in the cluster: qualify them by namespace (RBAC names may be long). */}}
{{- define "rectrain-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "rectrain-operator.fullname" .) | trunc 200 | trimSuffix "-" }}
{{- end }}

{{- define "rectrain-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rectrain-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rectrain-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "rectrain-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: rectrain
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rectrain-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rectrain-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rectrain-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What rectrain-operator does with the API (operator/rectrain_operator/cluster.py, main.py); least
privilege, no wildcards. The per-job Role it creates grants get on rectrainjobs and get/patch on
rectrainjobs/status, which RBAC only allows a holder of those rights to grant.
*/}}
{{- define "rectrain-operator.namespacedRules" -}}
- apiGroups: ["rectrain.io"]
  resources: ["rectrainjobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["rectrain.io"]
  resources: ["rectrainjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["get", "create", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.gangScheduling.enabled }}
- apiGroups: ["scheduling.volcano.sh", "scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "list", "create", "delete"]
{{- end }}
{{- end }}

{{/* The kopf peering object's name (--peering): peering.name, else the release's full name. */}}
{{- define "rectrain-operator.peeringName" -}}
{{- /* Not the release's name: every rectrain-operator joins "rectrain-operator" by default, so a
hand-started one (make demo) and any release find each other and only one acts. */ -}}
{{- default "rectrain-operator" .Values.peering.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What kopf's peering does with the peering objects (kopf 1.45 _core/engines/peering.py, _cogs/clients):
list+watch them (the operator's standby.py follows them with the same verbs) and merge-patch its
keep-alive into their status (no status subresource). No create: the chart creates them.
*/}}
{{- define "rectrain-operator.peeringRules" -}}
{{- if .root.Values.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: [{{ .resource | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* The admission webhook's Service (a DNS label: at most 63) and its certificates' Secret (templates/webhook.yaml). */}}
{{- define "rectrain-operator.webhookService" -}}
{{- printf "%s-webhook" (include "rectrain-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "rectrain-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "rectrain-operator.fullname" .) }}
{{- end }}
