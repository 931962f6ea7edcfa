{{/* Labels of an object of one component; selectors use mailstack.selector (no part-of). */}}
{{- define "mailstack.labels" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: mailstack
app.kubernetes.io/part-of: mailstack
{{- end }}

{{- define "mailstack.selector" -}}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/name: mailstack
{{- end }}

{{- define "mailstack.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* Where the frontends and the worker call the mailstore: with PostgreSQL the headless Service, every
ready replica, round robin by gRPC's DNS resolver (ADR 0032); with SQLite the one replica's Service. */}}
{{- define "mailstack.mailstoreAddr" -}}
{{- if eq .Values.backend "postgresql" -}}
dns:///mailstore-headless.{{ .Release.Namespace }}.svc:50051
{{- else -}}
mailstore:50051
{{- end }}
{{- end }}

{{- define "mailstack.configData" -}}
MAILSTACK_BIND: 0.0.0.0
MAILSTACK_BLOB_URL: {{ .Values.s3.blobUrl | quote }}
MAILSTACK_DATA_DIR: /data
MAILSTACK_DKIM_KEYS: {{ .Values.dkim.keys | quote }}
MAILSTACK_GRPC_CA: /etc/mailstack/grpc/ca.crt
MAILSTACK_GRPC_CERT: /etc/mailstack/grpc/tls.crt
MAILSTACK_GRPC_KEY: /etc/mailstack/grpc/tls.key
MAILSTACK_HOSTNAME: {{ .Values.hostname | quote }}
MAILSTACK_IMAPS_PORT: "993"
MAILSTACK_IMAP_PORT: "143"
MAILSTACK_LMTP_PORT: "24"
MAILSTACK_LOG_FORMAT: json
MAILSTACK_LOG_LEVEL: {{ .Values.logLevel | quote }}
MAILSTACK_MAILSTORE_ADDR: {{ include "mailstack.mailstoreAddr" . | quote }}
MAILSTACK_METRICS_PORT: "9090"
MAILSTACK_POP3S_PORT: "995"
MAILSTACK_POP3_PORT: "110"
MAILSTACK_PROXY_PROTOCOL: {{ .Values.proxyProtocol.enabled | toString | quote }}
{{- if .Values.proxyProtocol.enabled }}
MAILSTACK_PROXY_TRUSTED_NETWORKS: {{ required "proxyProtocol.trustedNetworks is required when proxyProtocol.enabled" .Values.proxyProtocol.trustedNetworks | quote }}
{{- end }}
MAILSTACK_S3_ENDPOINT: {{ .Values.s3.endpoint | quote }}
MAILSTACK_S3_PATH_STYLE: {{ .Values.s3.pathStyle | toString | quote }}
MAILSTACK_S3_REGION: {{ .Values.s3.region | quote }}
MAILSTACK_SEND_LISTEN: 0.0.0.0:50052
MAILSTACK_SMTP_PORT: "25"
MAILSTACK_SUBMISSIONS_PORT: "465"
MAILSTACK_SUBMISSION_PORT: "587"
MAILSTACK_TLS_CERT: /etc/mailstack/tls/tls.crt
MAILSTACK_TLS_KEY: /etc/mailstack/tls/tls.key
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.otlpEndpoint | quote }}
{{- end }}

{{/* Like kustomize's configMapGenerator: the name carries a hash of the data, so a change rolls the pods. */}}
{{- define "mailstack.configName" -}}
mailstack-config-{{ include "mailstack.configData" . | sha256sum | trunc 10 }}
{{- end }}

{{- define "mailstack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The mailstore's container, the same for the StatefulSet (sqlite) and the Deployment (postgresql). */}}
{{- define "mailstack.mailstoreContainer" -}}
- name: mailstore
  image: {{ include "mailstack.image" . }}
  args: ["serve", "mailstore"]
  envFrom:
    - configMapRef:
        name: {{ include "mailstack.configName" . }}
  env:
    - name: MAILSTACK_METADATA_URL
      {{- if eq .Values.backend "sqlite" }}
      value: sqlite:///data/metadata.sqlite3
      {{- else if .Values.cloudnativePG.enabled }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.cloudnativePG.name }}-app
          key: uri
      {{- else }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.postgresql.secretName }}
          key: {{ .Values.postgresql.secretKey }}
      {{- end }}
    - name: MAILSTACK_MAILSTORE_LISTEN
      value: 0.0.0.0:50051
    - name: MAILSTACK_MAILSTORE_ADDR
      value: 127.0.0.1:50051
    - name: MAILSTACK_GRPC_ADMIN_CERT
      value: /etc/mailstack/grpc-admin/tls.crt
    - name: MAILSTACK_GRPC_ADMIN_KEY
      value: /etc/mailstack/grpc-admin/tls.key
    - name: MAILSTACK_EVENTS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.secretName }}
          key: url
    - name: MAILSTACK_QUOTA_URL
      valueFrom:
        secretKeyRef:
          name: {{ .Values.redis.secretName }}
          key: url
    - name: AWS_ACCESS_KEY_ID
      valueFrom:
        secretKeyRef:
          name: {{ .Values.s3.secretName }}
          key: access-key-id
    - name: AWS_SECRET_ACCESS_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .Values.s3.secretName }}
          key: secret-access-key
    - name: OTEL_SERVICE_NAME
      value: mailstack-mailstore
  ports:
    - name: grpc
      containerPort: 50051
    - name: send
      containerPort: 50052
    - name: metrics
      containerPort: 9090
  startupProbe:
    httpGet:
      path: /ready
      port: metrics
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    httpGet:
      path: /ready
      port: metrics
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet:
      path: /live
      port: metrics
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 4
  resources:
    {{- toYaml .Values.mailstore.resources | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    capabilities:
      drop: ["ALL"]
  volumeMounts:
    - name: data
      mountPath: /data
    - name: grpc-identity
      mountPath: /etc/mailstack/grpc
      readOnly: true
    - name: grpc-admin
      mountPath: /etc/mailstack/grpc-admin
      readOnly: true
    - name: dkim
      mountPath: /etc/mailstack/dkim
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}

{{- define "mailstack.mailstoreVolumes" -}}
- name: grpc-identity
  secret:
    secretName: mailstack-grpc-mailstore
    defaultMode: 288
- name: grpc-admin
  secret:
    secretName: mailstack-grpc-admin
    defaultMode: 288
- name: dkim
  secret:
    secretName: {{ .Values.dkim.secretName }}
    defaultMode: 288
    optional: true
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end }}
