{{/*
Names and labels. Every template takes the chart's context (in a parent chart: `index .Subcharts "threescale-proxy"`).
*/}}

{{- define "threescale-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-name-chart-name, or the release name alone when it already contains the chart name */}}
{{- define "threescale-proxy.fullname" -}}
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

{{- define "threescale-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "threescale-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "threescale-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "threescale-proxy.labels" -}}
helm.sh/chart: {{ include "threescale-proxy.chart" . }}
{{ include "threescale-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: {{ .Values.partOf | default .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "threescale-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "threescale-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "threescale-proxy.configMapName" -}}
{{- printf "%s-config" (include "threescale-proxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret the container reads with envFrom: the user's, or the chart's. */}}
{{- define "threescale-proxy.secretName" -}}
{{- .Values.existingSecret | default (include "threescale-proxy.fullname" .) }}
{{- end }}

{{- define "threescale-proxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Port names: in sidecar mode they share the pod with the app's ports, so they get a prefix. */}}
{{- define "threescale-proxy.httpPortName" -}}
{{- if eq .Values.mode "sidecar" }}proxy-http{{ else }}http{{ end }}
{{- end }}
{{- define "threescale-proxy.metricsPortName" -}}
{{- if eq .Values.mode "sidecar" }}proxy-metrics{{ else }}metrics{{ end }}
{{- end }}

{{/* Whether the Redis URL carries an AUTH token (${REDIS_AUTH_TOKEN}). */}}
{{- define "threescale-proxy.redisAuth" -}}
{{- if and (eq .Values.redis.type "external") .Values.externalRedis.auth.enabled }}true{{ end }}
{{- end }}

{{- define "threescale-proxy.redisUrl" -}}
{{- if eq .Values.redis.type "memory" }}
{{- "memory://" }}
{{- else }}
{{- $r := .Values.externalRedis }}
{{- $userinfo := "" }}
{{- if include "threescale-proxy.redisAuth" . }}
{{- $userinfo = printf "%s:${REDIS_AUTH_TOKEN}@" $r.auth.username }}
{{- end }}
{{- printf "%s://%s%s:%d/%d" (ternary "rediss" "redis" $r.tls) $userinfo $r.host (int $r.port) (int $r.db) }}
{{- end }}
{{- end }}

{{/*
The proxy's config file: values.config with listen addresses, redis_url, and each service's upstream and token
defaults filled in by the chart.
*/}}
{{- define "threescale-proxy.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.ports.http)) }}
{{- $_ = set $cfg "metrics_listen" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) }}
{{- $_ = set $cfg "redis_url" (include "threescale-proxy.redisUrl" .) }}
{{- /* workers unset: the proxy runs one per CPU of its cgroup limit; without a CPU limit that would be every
CPU of the node, each worker with its own memory, so the chart pins one */}}
{{- if and (not (hasKey $cfg "workers")) (not (dig "limits" "cpu" "" (.Values.resources | default dict))) }}
{{- $_ = set $cfg "workers" 1 }}
{{- end }}
{{- $upstream := .Values.upstream.url }}
{{- if and (not $upstream) (eq .Values.mode "sidecar") }}
{{- $upstream = printf "http://127.0.0.1:%d" (int .Values.sidecar.appPort) }}
{{- end }}
{{- $portal := include "threescale-proxy.fromPortal" . }}
{{- if .Values.threescale.portalEndpoint }}
{{- $ts := $cfg.threescale | default dict }}
{{- $_ = set $ts "portal_endpoint" "${THREESCALE_PORTAL_ENDPOINT}" }}
{{- $_ = set $cfg "threescale" $ts }}
{{- end }}
{{- $services := list }}
{{- range $i, $svc := ($cfg.services | default list) }}
{{- if not (hasKey $svc "upstream") }}
{{- if not $upstream }}
{{- fail (printf "config.services[%d].upstream: set upstream.url (standalone mode) or the service's own upstream" $i) }}
{{- end }}
{{- $_ = set $svc "upstream" $upstream }}
{{- end }}
{{- if and (not (hasKey $svc "token")) (not $portal) }}
{{- $_ = set $svc "token" "${THREESCALE_SERVICE_TOKEN}" }}
{{- end }}
{{- $services = append $services $svc }}
{{- end }}
{{- $_ = set $cfg "services" $services }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checks across keys that values.schema.json cannot express; each message names the key to fix.
*/}}
{{- define "threescale-proxy.validate" -}}
{{- $v := .Values }}
{{- $shutdown := $v.config.shutdown | default dict }}
{{- $timeout := $shutdown.timeout | default 25 }}
{{- $preStop := $v.lifecycle.preStopSleepSeconds | default 0 }}
{{- $need := add (int (ceil $timeout)) (int $preStop) 5 }}
{{- if lt (int $v.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "terminationGracePeriodSeconds: %d is too short: it must be at least lifecycle.preStopSleepSeconds (%d) + config.shutdown.timeout (%v) + 5 = %d" (int $v.terminationGracePeriodSeconds) (int $preStop) $timeout $need) }}
{{- end }}
{{- if not $v.existingSecret }}
{{- $needsToken := false }}
{{- range (ternary list ($v.config.services | default list) (not (empty (include "threescale-proxy.fromPortal" .)))) }}
{{- if not (hasKey . "token") }}{{ $needsToken = true }}{{ end }}
{{- end }}
{{- if and $needsToken (not $v.threescale.serviceToken) }}
{{- fail "threescale.serviceToken: required (or existingSecret, or a token on every service in config.services)" }}
{{- end }}
{{- if and (include "threescale-proxy.redisAuth" .) (not $v.externalRedis.auth.existingSecret) (not $v.externalRedis.auth.password) }}
{{- fail "externalRedis.auth.password: required when externalRedis.auth.enabled (or externalRedis.auth.existingSecret, or existingSecret holding REDIS_AUTH_TOKEN)" }}
{{- end }}
{{- end }}
{{- if and $v.sidecar.native (eq $v.mode "sidecar") (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "sidecar.native: native sidecars need Kubernetes 1.29 or newer, this cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (eq $v.lifecycle.preStopMethod "sleepAction") (gt (int $v.lifecycle.preStopSleepSeconds) 0) (not (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "lifecycle.preStopMethod: sleepAction needs Kubernetes 1.30 or newer, this cluster is %s; use exec" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when the config or the chart's Secret changes, and the scrape hints. */}}
{{- define "threescale-proxy.podAnnotations" -}}
checksum/config: {{ include "threescale-proxy.config" . | sha256sum }}
{{- if not .Values.existingSecret }}
checksum/secret: {{ include "threescale-proxy.secretData" . | sha256sum }}
{{- end }}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* "true" when services come from the 3scale portal (threescale.portalEndpoint or config.threescale.portal_endpoint). */}}
{{- define "threescale-proxy.fromPortal" -}}
{{- if or .Values.threescale.portalEndpoint (dig "threescale" "portal_endpoint" "" .Values.config) }}true{{ end }}
{{- end }}

{{/* The chart's Secret data (base64), shared by secret.yaml and the checksum annotation. */}}
{{- define "threescale-proxy.secretData" -}}
{{- $data := dict }}
{{- with .Values.threescale.serviceToken }}
{{- $_ := set $data "THREESCALE_SERVICE_TOKEN" . }}
{{- end }}
{{- with .Values.threescale.portalEndpoint }}
{{- $_ := set $data "THREESCALE_PORTAL_ENDPOINT" . }}
{{- end }}
{{- if and (include "threescale-proxy.redisAuth" .) (not .Values.externalRedis.auth.existingSecret) }}
{{- $_ := set $data "REDIS_AUTH_TOKEN" .Values.externalRedis.auth.password }}
{{- end }}
{{- range $k, $val := .Values.secretEnv }}
{{- $_ := set $data $k $val }}
{{- end }}
{{- range $k := keys $data | sortAlpha }}
{{ $k }}: {{ get $data $k | toString | b64enc | quote }}
{{- end }}
{{- end }}

{{/*
The proxy container, one item of a pod's `containers` (or `initContainers` with sidecar.native).
Sidecar mode: include it in your pod spec, with `threescale-proxy.volumes` under `volumes`.
*/}}
{{- define "threescale-proxy.container" -}}
{{- include "threescale-proxy.validate" . }}
{{- $native := and (eq .Values.mode "sidecar") .Values.sidecar.native -}}
- name: {{ ternary .Values.sidecar.containerName "threescale-proxy" (eq .Values.mode "sidecar") }}
  image: {{ include "threescale-proxy.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  env:
    - name: PROXY_CONFIG
      value: /etc/threescale-proxy/proxy.yaml
    {{- if and (include "threescale-proxy.redisAuth" .) .Values.externalRedis.auth.existingSecret }}
    - name: REDIS_AUTH_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .Values.externalRedis.auth.existingSecret }}
          key: {{ .Values.externalRedis.auth.existingSecretKey }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  envFrom:
    - secretRef:
        name: {{ include "threescale-proxy.secretName" . }}
  ports:
    - name: {{ include "threescale-proxy.httpPortName" . }}
      containerPort: {{ .Values.ports.http }}
      protocol: TCP
    - name: {{ include "threescale-proxy.metricsPortName" . }}
      containerPort: {{ .Values.ports.metrics }}
      protocol: TCP
  {{- if .Values.startupProbe.enabled }}
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ include "threescale-proxy.metricsPortName" . }}
    {{- toYaml (omit .Values.startupProbe "enabled") | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ include "threescale-proxy.metricsPortName" . }}
    {{- toYaml .Values.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ include "threescale-proxy.metricsPortName" . }}
    {{- toYaml .Values.readinessProbe | nindent 4 }}
  {{- if gt (int .Values.lifecycle.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      {{- if eq .Values.lifecycle.preStopMethod "sleepAction" }}
      sleep:
        seconds: {{ .Values.lifecycle.preStopSleepSeconds }}
      {{- else }}
      exec:
        command: ["/usr/local/bin/python3", "-c", "import time; time.sleep({{ .Values.lifecycle.preStopSleepSeconds }})"]
      {{- end }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: threescale-proxy-config
      mountPath: /etc/threescale-proxy
      readOnly: true
    - name: threescale-proxy-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the container mounts: items of the pod's `volumes`. */}}
{{- define "threescale-proxy.volumes" -}}
- name: threescale-proxy-config
  configMap:
    name: {{ include "threescale-proxy.configMapName" . }}
    items:
      - key: proxy.yaml
        path: proxy.yaml
- name: threescale-proxy-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
