{{/*
The chart's name, truncated to 63 characters (the limit of a DNS label and of label values).
*/}}
{{- define "webhook-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, used for every object: <release>-<chart> unless the release name holds the chart's.
*/}}
{{- define "webhook-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "webhook-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels (app.kubernetes.io/*), on every object.
*/}}
{{- define "webhook-sidecar.labels" -}}
helm.sh/chart: {{ include "webhook-sidecar.chart" . }}
{{ include "webhook-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: webhook-receiver
app.kubernetes.io/part-of: {{ include "webhook-sidecar.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The labels that select the pods: never change them between releases (a Deployment's selector is immutable).
*/}}
{{- define "webhook-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "webhook-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webhook-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret whose keys become the sidecar's environment: the user's existingSecret or the chart's own.
*/}}
{{- define "webhook-sidecar.secretName" -}}
{{- default (include "webhook-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "webhook-sidecar.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Where the image's command reads the routing table, and where the spool volume is mounted.
Both are fixed by the Dockerfile (CMD --config, and the spool_dir of the default config).
*/}}
{{- define "webhook-sidecar.configDir" -}}/etc/webhook-sidecar{{- end }}
{{- define "webhook-sidecar.spoolDir" -}}/var/lib/webhook-sidecar{{- end }}

{{/*
The first endpoint of the routing table, as a dict (empty when the table does not parse): for NOTES.txt.
*/}}
{{- define "webhook-sidecar.firstEndpoint" -}}
{{- $cfg := .Values.config | fromYaml }}
{{- $endpoints := list }}
{{- if and (kindIs "map" $cfg) (kindIs "slice" (get $cfg "endpoints")) }}
{{- $endpoints = get $cfg "endpoints" }}
{{- end }}
{{- if $endpoints }}
{{- toJson (first $endpoints) }}
{{- else }}
{{- toJson dict }}
{{- end }}
{{- end }}

{{/*
The names of the Secret the chart creates, as a JSON list: every secret_env of the routing table (so the
table's secrets always exist) and every key of secrets.values.
*/}}
{{- define "webhook-sidecar.secretKeys" -}}
{{- $names := concat (list) (keys (.Values.secrets.values | default dict)) }}
{{- $cfg := .Values.config | fromYaml }}
{{- if and (kindIs "map" $cfg) (kindIs "slice" (get $cfg "endpoints")) }}
{{- range (get $cfg "endpoints") }}
{{- $env := and (kindIs "map" .) (get . "secret_env") }}
{{- if and (kindIs "string" $env) $env }}
{{- $names = append $names $env }}
{{- else if kindIs "slice" $env }}
{{- $names = concat $names $env }}
{{- end }}
{{- end }}
{{- end }}
{{- $names | uniq | sortAlpha | toJson }}
{{- end }}
