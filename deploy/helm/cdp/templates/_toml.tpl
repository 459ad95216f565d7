{{/*
Renders a map as a TOML document: the file `cdp --config` reads.

Helm's own toToml writes every number of the values as a float (`batch_size = 1000.0`), which
cdp rejects for its integer keys, so whole numbers are written as integers here. Keys are written
bare when TOML allows it, quoted otherwise (librdkafka properties such as "security.protocol").

Call with (dict "table" MAP "path" "") for the whole document.
*/}}
{{- define "cdp.toml.table" -}}
{{- $table := .table -}}
{{- $path := .path -}}
{{- $scalars := list -}}
{{- $tables := list -}}
{{- $arrays := list -}}
{{- range $k := keys $table | sortAlpha -}}
{{- $v := index $table $k -}}
{{- if kindIs "map" $v -}}
{{- $tables = append $tables $k -}}
{{- else if and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v)) -}}
{{- $arrays = append $arrays $k -}}
{{- else if not (kindIs "invalid" $v) -}}
{{- $scalars = append $scalars $k -}}
{{- end -}}
{{- end -}}
{{- range $k := $scalars }}
{{ include "cdp.toml.key" $k }} = {{ include "cdp.toml.value" (index $table $k) }}
{{- end -}}
{{- range $k := $tables -}}
{{- $sub := printf "%s%s" (ternary "" (printf "%s." $path) (eq $path "")) (include "cdp.toml.key" $k) }}

[{{ $sub }}]
{{- include "cdp.toml.table" (dict "table" (index $table $k) "path" $sub) -}}
{{- end -}}
{{- range $k := $arrays -}}
{{- $sub := printf "%s%s" (ternary "" (printf "%s." $path) (eq $path "")) (include "cdp.toml.key" $k) -}}
{{- range $item := index $table $k }}

[[{{ $sub }}]]
{{- include "cdp.toml.table" (dict "table" $item "path" $sub) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A key: bare when it is letters, digits, `_` and `-` only, a quoted string otherwise. */}}
{{- define "cdp.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* A value: string, boolean, integer, float, or an array of those. */}}
{{- define "cdp.toml.value" -}}
{{- if kindIs "string" . -}}
{{- /* A literal string keeps CEL expressions and URLs readable ('a == "b" && c'); toJson
would escape them (\u0026 for &), which TOML reads back the same but people do not. */ -}}
{{- if and (regexMatch "[\"<>&\\\\]" .) (regexMatch "^[^'[:cntrl:]]*$" .) -}}
'{{ . }}'
{{- else -}}
{{ toJson . }}
{{- end -}}
{{- else if kindIs "bool" . -}}
{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "cdp.toml.value" $e }}{{ end }}]
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}
