{{/* The release's name for its objects: <release>, or <release>-gpulab when the release's name does not say gpulab. */}}
{{- define "gpulab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 56 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpulab.hubName" -}}
{{- include "gpulab.fullname" . }}-hub
{{- end -}}

{{- define "gpulab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gpulab.hubName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the account the hub runs as, when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespace of users' pods, claims and secrets. */}}
{{- define "gpulab.userNamespace" -}}
{{- $k := .Values.config.kubernetes | default dict -}}
{{- default .Release.Namespace $k.namespace -}}
{{- end -}}

{{/* Where the release's Services' names live: <namespace>.svc.<cluster domain>. */}}
{{- define "gpulab.serviceDomain" -}}
{{- $k := .Values.config.kubernetes | default dict -}}
{{- printf "%s.svc.%s" .Release.Namespace ($k.cluster_domain | default "cluster.local") -}}
{{- end -}}

{{- define "gpulab.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hub
{{- end -}}

{{- define "gpulab.labels" -}}
{{ include "gpulab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gpulab.secretName" -}}
{{- default (include "gpulab.hubName" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* gpulab.yaml: the user's settings with what the chart decides on top. */}}
{{- define "gpulab.settings" -}}
{{- $s := deepCopy (.Values.config | default dict) -}}
{{- $hub := deepCopy ($s.hub | default dict) -}}
{{- $_ := set $hub "port" .Values.hub.ports.http -}}
{{- $_ := set $hub "hub_port" .Values.hub.ports.api -}}
{{- $_ := set $hub "proxy_api_port" .Values.hub.ports.proxyApi -}}
{{- if .Values.extraConfig -}}
{{- $_ := set $hub "extra_config" "/etc/gpulab/extra_config.py" -}}
{{- end -}}
{{- $k := deepCopy ($s.kubernetes | default dict) -}}
{{- $_ := set $k "namespace" (include "gpulab.userNamespace" .) -}}
{{- $_ := set $k "hub_connect_ip" (printf "%s.%s" (include "gpulab.hubName" .) (include "gpulab.serviceDomain" .)) -}}
{{- $_ := set $s "hub" $hub -}}
{{- $_ := set $s "kubernetes" $k -}}
{{- $_ := set $s "backend" "kubernetes" -}}
{{- $_ := set $s "data_root" "/var/lib/gpulab" -}}
{{- toYaml $s -}}
{{- end -}}
