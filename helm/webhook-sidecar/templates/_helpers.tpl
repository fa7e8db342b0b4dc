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
The standard labels (app.kubernetes.io/*) and commonLabels, on every object.
*/}}
{{- define "webhook-sidecar.labels" -}}
{{ include "webhook-sidecar.commonLabels" . }}
{{ include "webhook-sidecar.selectorLabels" . }}
app.kubernetes.io/component: webhook-receiver
{{- end }}

{{/*
Labels of every object except the pods' selector labels (the helm test pod must not match the Service).
*/}}
{{- define "webhook-sidecar.commonLabels" -}}
{{- $labels := dict "helm.sh/chart" (include "webhook-sidecar.chart" .) "app.kubernetes.io/version" .Chart.AppVersion }}
{{- $_ := set $labels "app.kubernetes.io/part-of" (include "webhook-sidecar.name" .) }}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .Release.Service }}
{{- toYaml (merge $labels (deepCopy (.Values.commonLabels | default dict))) }}
{{- end }}

{{/*
A securityContext (pod or container) as given, without the user and group ids when openshift.enabled: the
restricted-v2 SCC assigns them from the namespace's range and refuses others.
*/}}
{{- define "webhook-sidecar.securityContext" -}}
{{- $context := .context | default dict }}
{{- if .root.Values.openshift.enabled }}
{{- $context = omit $context "runAsUser" "runAsGroup" "fsGroup" }}
{{- end }}
{{- toYaml $context }}
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
The Secret the sidecar reads (as files, or as its environment with secrets.asEnv): existingSecret or the chart's.
*/}}
{{- define "webhook-sidecar.secretName" -}}
{{- default (include "webhook-sidecar.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The image reference: [registry/]repository, then @digest or :tag (the chart's appVersion by default).
global.imageRegistry, else image.registry, replaces the registry of image.repository: its first part when that
names a host as Docker reads one (holds a '.' or ':', or is localhost), so a mirror needs only the registry.
*/}}
{{- define "webhook-sidecar.image" -}}
{{- $image := .Values.image }}
{{- $registry := trimSuffix "/" (default $image.registry ((.Values.global | default dict).imageRegistry)) }}
{{- $repository := $image.repository }}
{{- if $registry }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq "localhost" $first)) }}
{{- $repository = join "/" (rest $parts) }}
{{- end }}
{{- $repository = printf "%s/%s" $registry $repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
metadata.annotations of an object, on a new line indented by .indent: its own (.extra) over commonAnnotations;
nothing at all when both are empty.
Call: {{- include "webhook-sidecar.annotations" (dict "root" $ "extra" .Values.service.annotations "indent" 2) }}
*/}}
{{- define "webhook-sidecar.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.root.Values.commonAnnotations | default dict)) }}
{{- if $all }}
{{- printf "annotations:\n%s" (toYaml $all | indent 2) | nindent .indent }}
{{- end }}
{{- end }}

{{/*
Where the image's command reads the routing table, and where the spool volume is mounted.
Both are fixed by the Dockerfile (CMD --config, and the spool_dir of the default config).
*/}}
{{- define "webhook-sidecar.configDir" -}}/etc/webhook-sidecar{{- end }}
{{- define "webhook-sidecar.spoolDir" -}}/var/lib/webhook-sidecar{{- end }}

{{/*
With spool.postgres: where the URL's Secret is mounted (a directory of its own, outside the config directory,
/tmp, the spool and secrets.mountPath), and the file config.yaml's spool_url_file names.
*/}}
{{- define "webhook-sidecar.adminTokenDir" -}}/run/secrets/webhook-sidecar-admin{{- end }}
{{- define "webhook-sidecar.adminTokenFile" -}}
{{- include "webhook-sidecar.adminTokenDir" . }}/{{ .Values.admin.key }}
{{- end }}
{{- define "webhook-sidecar.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "webhook-sidecar.fullname" .)) }}
{{- end }}
{{- define "webhook-sidecar.spoolUrlDir" -}}/run/secrets/webhook-sidecar-spool{{- end }}
{{- define "webhook-sidecar.spoolUrlFile" -}}
{{- printf "%s/%s" (include "webhook-sidecar.spoolUrlDir" .) .Values.spool.postgres.key }}
{{- end }}

{{/*
config.yaml as the ConfigMap holds it: values.config, with spool.postgres the shared spool instead of spool_dir
(the two exclude each other): `spool_url_file: <the mounted URL>`. A `spool_url_env: SPOOL_DATABASE_URL` line
(the variable earlier charts set) gives way to it too; a spool_url_file or another spool_url_env of the table
is kept as written.
*/}}
{{- define "webhook-sidecar.config" -}}
{{- $config := .Values.config }}
{{- if and .Values.admin.enabled (not (regexMatch "(?m)^admin:" $config)) }}
{{- $config = printf "admin: {listen: \"0.0.0.0:%d\", token_file: %s}\n%s" (int .Values.admin.port) (include "webhook-sidecar.adminTokenFile" .) $config }}
{{- end }}
{{- if .Values.spool.postgres.existingSecret }}
{{- $config = regexReplaceAll "(?m)^spool_url_env:[ \t]*[\"']?SPOOL_DATABASE_URL[\"']?[ \t]*(#.*)?(\n|$)" $config "" }}
{{- if not (regexMatch "(?m)^spool_url_(env|file):" $config) }}
{{- $config = printf "spool_url_file: %s\n%s" (include "webhook-sidecar.spoolUrlFile" .) (regexReplaceAll "(?m)^spool_dir:.*(\n|$)" $config "") }}
{{- end }}
{{- end }}
{{- $config }}
{{- end }}

{{/*
"true" when the pod mounts spool.postgres's Secret: config.yaml names the chart's URL file. A table that takes
the URL from elsewhere (its own spool_url_env or spool_url_file) gets no such file, which hooks could read.
*/}}
{{- define "webhook-sidecar.spoolUrlMounted" -}}
{{- if .Values.spool.postgres.existingSecret }}
{{- $cfg := include "webhook-sidecar.config" . | fromYaml }}
{{- if and (kindIs "map" $cfg) (eq (toString (get $cfg "spool_url_file")) (include "webhook-sidecar.spoolUrlFile" .)) }}true{{ end }}
{{- end }}
{{- end }}

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
The names of the Secret the chart creates, as a JSON list: every secret_env of the routing table, every
secret_file under secrets.mountPath (its file name), so the table's secrets always exist, and every key of
secrets.values.
*/}}
{{- define "webhook-sidecar.secretKeys" -}}
{{- $names := concat (list) (keys (.Values.secrets.values | default dict)) }}
{{- $prefix := printf "%s/" (trimSuffix "/" .Values.secrets.mountPath) }}
{{- $cfg := .Values.config | fromYaml }}
{{- if and (kindIs "map" $cfg) (kindIs "slice" (get $cfg "endpoints")) }}
{{- range (get $cfg "endpoints") }}
{{- $endpoint := . }}
{{- range $key := list "secret_env" "secret_file" }}
{{- $value := and (kindIs "map" $endpoint) (get $endpoint $key) }}
{{- $items := list }}
{{- if and (kindIs "string" $value) $value }}
{{- $items = list $value }}
{{- else if kindIs "slice" $value }}
{{- $items = $value }}
{{- end }}
{{- range $items }}
{{- if eq $key "secret_env" }}
{{- $names = append $names . }}
{{- else if and (kindIs "string" .) (hasPrefix $prefix .) }}
{{- $names = append $names (trimPrefix $prefix .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $names | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
The file names config.yaml's routes run from its own directory (`./x.sh`, alone or as an argv list's first
word; a bare `x.sh` is looked up on PATH), as a JSON list: which example hooks to add.
*/}}
{{- define "webhook-sidecar.runNames" -}}
{{- $names := list }}
{{- $cfg := .Values.config | fromYaml }}
{{- if and (kindIs "map" $cfg) (kindIs "slice" (get $cfg "endpoints")) }}
{{- range (get $cfg "endpoints") }}
{{- $routes := and (kindIs "map" .) (get . "routes") }}
{{- if kindIs "slice" $routes }}
{{- range $routes }}
{{- $run := and (kindIs "map" .) (get . "run") }}
{{- if and (kindIs "slice" $run) $run }}
{{- $run = first $run }}
{{- end }}
{{- if and (kindIs "string" $run) (hasPrefix "./" $run) }}
{{- $names = append $names (trimPrefix "./" $run) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $names | uniq | toJson }}
{{- end }}

{{/*
The first endpoint's secret, as JSON {"key": Secret key, "file": path or ""}: from its first secret_file
(a key when it lies under secrets.mountPath) or its first secret_env. For NOTES.txt and the helm test pod.
*/}}
{{- define "webhook-sidecar.firstSecret" -}}
{{- $ep := include "webhook-sidecar.firstEndpoint" . | fromJson }}
{{- $file := get $ep "secret_file" | default "" }}
{{- if kindIs "slice" $file }}{{ $file = first $file }}{{ end }}
{{- $env := get $ep "secret_env" | default "" }}
{{- if kindIs "slice" $env }}{{ $env = first $env }}{{ end }}
{{- if $file }}
{{- toJson (dict "key" (base $file) "file" $file) }}
{{- else }}
{{- toJson (dict "key" ($env | default "WEBHOOK_SECRET") "file" "") }}
{{- end }}
{{- end }}

{{/*
The helm test pod's labels that the NetworkPolicy admits. Not the pods' selector labels: the Service must
never send deliveries to the test pod.
*/}}
{{- define "webhook-sidecar.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "webhook-sidecar.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The secret_env names of the routing table, as a JSON list.
*/}}
{{- define "webhook-sidecar.secretEnvs" -}}
{{- $names := list }}
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
{{- $names | uniq | toJson }}
{{- end }}

{{/*
How many pods the PodDisruptionBudget lets evictions take at once with replicaCount pods, counted as Kubernetes
counts (percentages round up, of minAvailable as of maxUnavailable); "" without a PodDisruptionBudget.
"0": no eviction ever passes, so `kubectl drain` waits forever. For NOTES.txt.
*/}}
{{- define "webhook-sidecar.pdbAllowed" -}}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if $pdb.enabled }}
{{- $replicas := int .Values.replicaCount }}
{{- $min := $pdb.minAvailable }}
{{- $max := $pdb.maxUnavailable }}
{{- if not (kindIs "invalid" $min) }}
{{- if kindIs "string" $min }}
{{- $min = div (add (mul (atoi (trimSuffix "%" $min)) $replicas) 99) 100 }}
{{- end }}
{{- max 0 (sub $replicas (int $min)) }}
{{- else }}
{{- if kindIs "invalid" $max }}
{{- $max = 1 }}
{{- else if kindIs "string" $max }}
{{- $max = div (add (mul (atoi (trimSuffix "%" $max)) $replicas) 99) 100 }}
{{- end }}
{{- min (int $max) $replicas }}
{{- end }}
{{- end }}
{{- end }}
