{{/*
capstan.name: the app.kubernetes.io/name label.
*/}}
{{- define "capstan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
capstan.fullname: the name of every object the chart makes. "capstan" by
default, not prefixed with the release name: a cluster has one node dataplane.
*/}}
{{- define "capstan.fullname" -}}
{{- default "capstan" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
capstan.labels: the labels of every object.
*/}}
{{- define "capstan.labels" -}}
{{ include "capstan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
capstan.selectorLabels: the labels the DaemonSet selects its pods by; they
must never change for an installed release.
*/}}
{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
capstan.image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "capstan.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
capstan.hostDir: the host directory to mount for a path value. A path with
$(NODE_NAME) in it names a different directory on each node (the kubelet
expands $(NODE_NAME) in the container's arguments), so the chart mounts the
directory before the first $(NODE_NAME), trailing slash trimmed, at the same
path: /var/lib/x/nodes/$(NODE_NAME)/cni gives /var/lib/x/nodes. A path
without $(NODE_NAME) is mounted as it is.
Usage: include "capstan.hostDir" (list "cni.confDir" .Values.cni.confDir)
*/}}
{{- define "capstan.hostDir" -}}
{{- $key := index . 0 -}}
{{- $path := index . 1 -}}
{{- $dir := $path -}}
{{- if contains "$(NODE_NAME)" $path -}}
{{- $dir = index (splitList "$(NODE_NAME)" $path) 0 | trimSuffix "/" -}}
{{- if not $dir -}}
{{- fail (printf "%s: %q: the part before $(NODE_NAME) must be a directory other than /, to mount it" $key $path) -}}
{{- end -}}
{{- end -}}
{{- $dir -}}
{{- end -}}

{{/*
capstan.probeHost and capstan.probePort: where the readiness probe reaches
healthzAddr. A wildcard address (0.0.0.0, ::, or none) is asked on 127.0.0.1:
the pod shares the node's network namespace.
*/}}
{{- define "capstan.probePort" -}}
{{- regexFind "[0-9]+$" .Values.healthzAddr -}}
{{- end -}}

{{- define "capstan.probeHost" -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.healthzAddr "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if has $host (list "" "0.0.0.0" "::") -}}
127.0.0.1
{{- else -}}
{{- $host -}}
{{- end -}}
{{- end -}}

{{/*
capstan.env: the environment of both containers. NODE_NAME is what
$(NODE_NAME) in their arguments expands to; CAPSTAN_DAEMONSET names the
DaemonSet the daemon watches to tell an uninstall from a restart.
*/}}
{{- define "capstan.env" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: CAPSTAN_DAEMONSET
  value: {{ printf "%s/%s" .Release.Namespace (include "capstan.fullname" .) | quote }}
{{- if .Values.k8sServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | int64 | toString | quote }}
{{- end }}
{{- end -}}
