{{- define "medlake.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "medlake.fullname" -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "medlake.labels" -}}
app.kubernetes.io/name: {{ include "medlake.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "medlake.selector" -}}
app.kubernetes.io/name: {{ include "medlake.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "medlake.image" -}}{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}{{- end -}}
{{- define "medlake.s3env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .Values.lake.s3.credentialsSecret }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .Values.lake.s3.credentialsSecret }}, key: AWS_SECRET_ACCESS_KEY}}
- name: AWS_REGION
  value: {{ .Values.lake.s3.region | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.lake.s3.endpoint | quote }}
{{- if .Values.lake.s3.caConfigMap }}
- name: AWS_CA_BUNDLE
  value: /etc/medlake/ca/ca.crt
- name: SSL_CERT_FILE
  value: /etc/medlake/ca/ca.crt
{{- end }}
{{- end -}}
