{{/* Names, labels and the pod template shared by the three stages. */}}

{{- define "cdp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cdp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a stage's objects; call with (list $ "ingest"). Stage names are short, so the
fullname is cut to leave them room within 63 characters. */}}
{{- define "cdp.stageName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "cdp.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "cdp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cdp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cdp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cdp
{{- end -}}

{{/* Selector labels of one stage; call with (list $ "ingest"). */}}
{{- define "cdp.stageSelectorLabels" -}}
{{ include "cdp.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cdp.stageLabels" -}}
{{ include "cdp.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cdp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cdp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cdp.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The subcommand each stage runs. */}}
{{- define "cdp.subcommand" -}}
{{- get (dict "ingest" "ingest" "resolver" "resolve" "activation" "activate") . -}}
{{- end -}}

{{/* Where the pods mount the ConfigMap, the data volume and the Kafka CA. */}}
{{- define "cdp.configDir" -}}/etc/cdp/config{{- end -}}
{{- define "cdp.configPath" -}}/etc/cdp/config/cdp.toml{{- end -}}
{{- define "cdp.dataPath" -}}/var/lib/cdp{{- end -}}
{{- define "cdp.kafkaCaDir" -}}/etc/cdp/kafka-ca{{- end -}}

{{/* The pod template of one stage; call with (list $ "ingest" $values_of_the_stage). */}}
{{- define "cdp.podTemplate" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- $s := index . 2 -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "cdp.stageLabels" (list $root $stage) | nindent 4 }}
  annotations:
    # Rolls the pods when the configuration changes.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $s.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "cdp.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # SIGTERM makes the stage stop fetching, commit its in-flight batch and exit 0 within this.
  terminationGracePeriodSeconds: {{ $s.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ $stage }}
      image: {{ include "cdp.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["/usr/local/bin/cdp"]
      args:
        - --config
        - {{ include "cdp.configPath" $root }}
        - --data
        - {{ include "cdp.dataPath" $root }}
        - --log-format
        - json
        - {{ include "cdp.subcommand" $stage }}
      ports:
        - name: http
          containerPort: {{ $v.http.port }}
          protocol: TCP
      env:
        # The listener binds every interface inside the pod (the default is loopback only).
        - name: CDP_HTTP__LISTEN
          value: {{ printf "0.0.0.0:%v" $v.http.port | quote }}
        - name: CDP_LOG
          value: {{ $v.logLevel | quote }}
        {{- with $v.kafka.sasl }}
        {{- if .existingSecret }}
        # SASL credentials (librdkafka sasl.username / sasl.password); KEDA reads them too.
        - name: CDP_KAFKA_SASL_USERNAME
          {{- if .usernameKey }}
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: {{ .usernameKey }}
          {{- else }}
          value: {{ .username | quote }}
          {{- end }}
        - name: CDP_KAFKA_SASL_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: {{ .passwordKey }}
        {{- end }}
        {{- end }}
        {{- range concat $v.secretEnv $s.secretEnv }}
        - name: {{ .name }}
          valueFrom:
            secretKeyRef:
              name: {{ .secretName }}
              key: {{ .key }}
        {{- end }}
        {{- with concat $v.extraEnv $s.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ $v.probes.startup.periodSeconds }}
        failureThreshold: {{ $v.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: {{ $v.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: {{ $v.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ $v.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml $s.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "cdp.configDir" $root }}
          readOnly: true
        - name: data
          mountPath: {{ include "cdp.dataPath" $root }}
        - name: tmp
          mountPath: /tmp
        {{- if $v.kafka.tls.caSecret }}
        - name: kafka-ca
          mountPath: {{ include "cdp.kafkaCaDir" $root }}
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "cdp.fullname" $root }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpSizeLimit }}
    {{- /* A stage with persistence gets `data` from its StatefulSet's volumeClaimTemplates. */}}
    {{- if not (hasKey $s "persistence") }}
    - name: data
      emptyDir:
        sizeLimit: {{ $s.dataSizeLimit }}
    {{- end }}
    {{- if $v.kafka.tls.caSecret }}
    - name: kafka-ca
      secret:
        secretName: {{ $v.kafka.tls.caSecret }}
        items:
          - key: {{ $v.kafka.tls.caKey }}
            path: ca.crt
    {{- end }}
  {{- with $s.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
