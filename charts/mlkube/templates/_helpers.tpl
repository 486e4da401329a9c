{{- define "mlkube.name" -}}mlkube-operator{{- end }}
{{- /* Cluster-scoped objects are the release's: <release>-operator, <release>-approver... (release
mlkube: mlkube-operator, mlkube-approver...), so namespaced releases on other namespaces coexist. */ -}}
{{- define "mlkube.clusterName" -}}{{ .root.Release.Name }}-{{ .name }}{{- end }}
{{- /* A policy binding's scope: a namespaced install's policies judge only its namespaces (another
release's operator is judged by that release's); otherwise every namespace. */ -}}
{{- define "mlkube.policyScope" -}}
{{- $names := include "mlkube.roleNamespaces" . | fromJsonArray }}
{{- if $names }}
matchResources:
  namespaceSelector:
    matchExpressions:
      - {key: kubernetes.io/metadata.name, operator: In, values: {{ toJson $names }}}
{{- end }}
{{- end }}
{{- define "mlkube.labels" -}}
app.kubernetes.io/name: mlkube-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- define "mlkube.image" -}}{{ .repository }}:{{ .tag | default $.appVersion }}{{- end }}
{{- /* Values the schema cannot judge alone; each refusal says what to change. */ -}}
{{- define "mlkube.validate" -}}
{{- range $name, $image := dict "image" .Values.image "runtimeImage" .Values.runtimeImage }}
{{- if eq ($image.tag | default "") "latest" }}
{{- fail (printf "%s.tag must not be \"latest\": pin a version (pods use imagePullPolicy IfNotPresent, so latest would never update)" $name) }}
{{- end }}
{{- end }}
{{- $root := .Values.artifacts.root | default "" }}
{{- if and .Values.artifacts.s3Secret (not (hasPrefix "s3://" $root)) }}
{{- fail "artifacts.s3Secret is used only with object storage: set artifacts.root=s3://<bucket>/<prefix> too, or leave s3Secret empty for the PVC mode" }}
{{- end }}
{{- if and .Values.artifacts.allowedURIPrefixes (not (hasPrefix "s3://" $root)) }}
{{- fail "artifacts.allowedURIPrefixes is used only with object storage (artifacts.root=s3://...)" }}
{{- end }}
{{- $rootDir := printf "%s/" (trimSuffix "/" $root) }}
{{- range .Values.artifacts.allowedURIPrefixes }}
{{- $prefix := printf "%s/" (trimSuffix "/" .) }}
{{- if or (hasPrefix $prefix $rootDir) (hasPrefix $rootDir $prefix) }}
{{- fail (printf "artifacts.allowedURIPrefixes entry %s overlaps artifacts.root %s: it would open every namespace's store to every namespace; list only prefixes outside the root" . $root) }}
{{- end }}
{{- end }}
{{- end }}
