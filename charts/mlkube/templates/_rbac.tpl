{{- /*
The operator's rights, exactly what its code calls (tests/unit/test_rbac.py compares them with
the controller's calls). RBAC narrows by namespace and by name, never by label: pods are patched
(the traffic label) and proxied (/metrics) by generated name, so the operator's pods cannot be
singled out here; a namespaced install (watchNamespaces of plain names) narrows them to those
namespaces, and the mlkube-operator-pods admission policy to mlkube's pods and that one label.
*/ -}}
{{- define "mlkube.namespacedRules" -}}
- apiGroups: [mlkube.io]
  resources: [trainingjobs, modelversions]
  verbs: [get, list, watch, create]
- apiGroups: [mlkube.io]
  resources: [deployments, driftmonitors, batchpredictions]
  verbs: [get, list, watch]
# admission (mlkube-approval): a TrainingJob with AutoApproveOnGates registers its version approved
- apiGroups: [mlkube.io]
  resources: [modelversions]
  verbs: [approve]
- apiGroups: [mlkube.io]
  resources:
    - trainingjobs/status
    - modelversions/status
    - deployments/status
    - driftmonitors/status
    - batchpredictions/status
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# server-side apply: create and patch; every kind of child is watched (its owner looks again
# when one changes or goes) and listed again after the watch expired
- apiGroups: [batch]
  resources: [cronjobs]
  verbs: [list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
- apiGroups: [""]
  resources: [pods/proxy]
  verbs: [get]
# list: a Job's FailedCreate Events say why its pods were refused (a ResourceQuota)
- apiGroups: [""]
  resources: [events]
  verbs: [list, create]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# each Deployment's HTTPRoute (traffic: GatewayAPI); watched, so no route shadows another's
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [list, watch, create, patch, delete]
# each Deployment's NetworkPolicy (networkPolicy.enabled): applied, deleted when turned off
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch, delete]
{{- end }}
{{- define "mlkube.clusterRules" -}}
# kopf notices CRDs appearing and going
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if and .Values.watchNamespaces (not (include "mlkube.roleNamespaces" . | fromJsonArray)) }}
# kopf matches namespace patterns against the namespaces there are
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if .Values.metrics.secure }}
# /metrics: who is asking (TokenReview), and may they (SubjectAccessReview)
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- end }}
{{- end }}
{{- /* watchNamespaces as plain names (JSON list), or [] when any is a pattern or none is set:
a Role needs a namespace that exists, so patterns keep the cluster-wide role. */ -}}
{{- define "mlkube.roleNamespaces" -}}
{{- $names := list }}
{{- $plain := true }}
{{- range .Values.watchNamespaces }}
{{- range splitList "," . }}
{{- $name := trim . }}
{{- if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $name }}
{{- $names = append $names $name }}
{{- else }}
{{- $plain = false }}
{{- end }}
{{- end }}
{{- end }}
{{- if $plain }}{{ uniq $names | toJson }}{{ else }}[]{{ end }}
{{- end }}
