{{/* The StatefulSet of a stage that keeps RocksDB state under --data (the resolver's identity
graph; activation's cohort membership, versions, input offsets and webhook delivery queue): the
state lives on a PersistentVolumeClaim per pod, so a restarted or rescheduled pod resumes where
the old one stopped. Call with (list $ "resolver"); the stage's values need `replicas` and
`persistence`. */}}
{{- define "cdp.statefulSet" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- $s := index $root.Values $stage -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ include "cdp.stageName" (list $root $stage) }}
  labels:
    {{- include "cdp.stageLabels" (list $root $stage) | nindent 4 }}
spec:
  serviceName: {{ include "cdp.stageName" (list $root $stage) }}
  replicas: {{ $s.replicas }}
  # A pod is replaced only after the old one has exited: RocksDB allows one writer.
  podManagementPolicy: OrderedReady
  updateStrategy:
    type: RollingUpdate
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "cdp.stageSelectorLabels" (list $root $stage) | nindent 6 }}
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: {{ ternary "Retain" "Delete" $s.persistence.retainOnDelete }}
    whenScaled: {{ ternary "Retain" "Delete" $s.persistence.retainOnDelete }}
  template:
    {{- include "cdp.podTemplate" (list $root $stage $s) | nindent 4 }}
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: data
        labels:
          {{- include "cdp.stageSelectorLabels" (list $root $stage) | nindent 10 }}
      spec:
        accessModes:
          {{- toYaml $s.persistence.accessModes | nindent 10 }}
        {{- with $s.persistence.storageClass }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $s.persistence.size }}
{{- end -}}
