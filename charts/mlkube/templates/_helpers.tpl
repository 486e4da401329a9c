{{- define "mlkube.name" -}}mlkube-operator{{- end }}
{{- define "mlkube.labels" -}}
app.kubernetes.io/name: mlkube-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- define "mlkube.image" -}}{{ .repository }}:{{ .tag | default $.appVersion }}{{- end }}
