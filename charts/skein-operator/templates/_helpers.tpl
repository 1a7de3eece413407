{{/* Labels every object of the chart carries (the same as config/default's). */}}
{{- define "skein-operator.labels" -}}
app.kubernetes.io/name: skein-operator
app.kubernetes.io/part-of: skein
{{- end -}}
