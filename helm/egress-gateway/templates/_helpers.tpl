{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "egress-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The base name of every object; kept at 50 characters so that suffixes such as "-admin",
     "-config" and "-policy" still fit in 63. */}}
{{- define "egress-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "egress-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "egress-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "egress-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "egress-gateway.labels" -}}
helm.sh/chart: {{ include "egress-gateway.chart" . }}
{{ include "egress-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "egress-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "egress-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "egress-gateway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "egress-gateway.policyConfigMapName" -}}
{{- if .Values.existingPolicyConfigMap.name -}}
{{- .Values.existingPolicyConfigMap.name -}}
{{- else -}}
{{- printf "%s-policy" (include "egress-gateway.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "egress-gateway.policyKey" -}}
{{- if .Values.existingPolicyConfigMap.name -}}
{{- .Values.existingPolicyConfigMap.key -}}
{{- else -}}
policy.yaml
{{- end -}}
{{- end -}}

{{- define "egress-gateway.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "egress-gateway.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the container ------------------------------------------------------------ */}}

{{- define "egress-gateway.configDir" -}}/etc/egress/config{{- end -}}
{{- define "egress-gateway.policyDir" -}}/etc/egress/policy{{- end -}}
{{- define "egress-gateway.tlsDir" -}}/etc/egress/tls{{- end -}}
{{- define "egress-gateway.clientCaDir" -}}/etc/egress/client-ca{{- end -}}

{{/* Listeners ----------------------------------------------------------------------------- */}}

{{/* The names of the enabled listeners, in the order of gateway.yaml (sorted by name), as a
     JSON list. The env overrides of hostNetwork.bindPodIP use these indexes. */}}
{{- define "egress-gateway.enabledListeners" -}}
{{- $names := list -}}
{{- range $name := keys .Values.listeners | sortAlpha -}}
{{- if ne (toString (get (get $.Values.listeners $name) "enabled")) "false" -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{- define "egress-gateway.servicePort" -}}
{{- default (get . "port") (get . "servicePort") | int -}}
{{- end -}}

{{- define "egress-gateway.anyTls" -}}
{{- range $name := include "egress-gateway.enabledListeners" . | fromJsonArray -}}
{{- if get (get $.Values.listeners $name) "tls" -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* NET_ADMIN is needed only by an enabled transparent listener with tproxy: true (the gateway
     sets IP_TRANSPARENT) and by config.upstream.mark (the gateway sets SO_MARK on its upstream
     sockets). Non-empty ("true") when one of them is set. */}}
{{- define "egress-gateway.needsNetAdmin" -}}
{{- $need := false -}}
{{- range $name := include "egress-gateway.enabledListeners" . | fromJsonArray -}}
{{- $l := get $.Values.listeners $name -}}
{{- if and (eq $l.kind "transparent") (get $l "tproxy") -}}{{- $need = true -}}{{- end -}}
{{- end -}}
{{- if not (kindIs "invalid" (dig "upstream" "mark" nil .Values.config)) -}}{{- $need = true -}}{{- end -}}
{{- if $need -}}true{{- end -}}
{{- end -}}

{{/* Durations ----------------------------------------------------------------------------- */}}

{{/* Whole seconds (rounded up) of a gateway duration such as "30s", "500ms", "1m 30s". */}}
{{- define "egress-gateway.durationSeconds" -}}
{{- $total := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" $part | float64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+" $part) $part -}}
{{- if eq $unit "ms" -}}{{- $total = addf $total (divf $n 1000) -}}
{{- else if eq $unit "s" -}}{{- $total = addf $total $n -}}
{{- else if eq $unit "m" -}}{{- $total = addf $total (mulf $n 60) -}}
{{- else if eq $unit "h" -}}{{- $total = addf $total (mulf $n 3600) -}}
{{- end -}}
{{- end -}}
{{- ceil $total | int -}}
{{- end -}}

{{- define "egress-gateway.drainSeconds" -}}
{{- include "egress-gateway.durationSeconds" .Values.config.shutdown.drainTimeout -}}
{{- end -}}

{{/* preStop sleep that is actually rendered: the sleep action exists from Kubernetes 1.30. */}}
{{- define "egress-gateway.preStopSeconds" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) -}}
{{- int .Values.preStopSleepSeconds -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{- define "egress-gateway.terminationGracePeriodSeconds" -}}
{{- $floor := add (include "egress-gateway.preStopSeconds" . | int) (include "egress-gateway.drainSeconds" . | int) 5 -}}
{{- $set := get .Values "terminationGracePeriodSeconds" -}}
{{- if or (kindIs "invalid" $set) (eq (toString $set) "") -}}
{{- add $floor 5 -}}
{{- else if le (int $set) $floor -}}
{{- fail (printf "terminationGracePeriodSeconds: %d is too short: it must be larger than the preStop sleep + config.shutdown.drainTimeout + 5 = %d, or the kubelet kills the gateway before its drain ends" (int $set) $floor) -}}
{{- else -}}
{{- int $set -}}
{{- end -}}
{{- end -}}

{{/* gateway.yaml ---------------------------------------------------------------------------- */}}

{{- define "egress-gateway.clientCaPaths" -}}
{{- $paths := list -}}
{{- if .Values.tls.clientCa.fromSecret -}}
{{- $paths = append $paths (printf "%s/ca.crt" (include "egress-gateway.tlsDir" .)) -}}
{{- end -}}
{{- range .Values.tls.clientCa.configMaps -}}
{{- $paths = append $paths (printf "%s/configmap-%s/%s" (include "egress-gateway.clientCaDir" $) .name .key) -}}
{{- end -}}
{{- range .Values.tls.clientCa.secrets -}}
{{- $paths = append $paths (printf "%s/secret-%s/%s" (include "egress-gateway.clientCaDir" $) .name .key) -}}
{{- end -}}
{{- toJson $paths -}}
{{- end -}}

{{- define "egress-gateway.gatewayConfig" -}}
{{- $listeners := list -}}
{{- $tlsDir := include "egress-gateway.tlsDir" . -}}
{{- range $name := include "egress-gateway.enabledListeners" . | fromJsonArray -}}
{{- $l := get $.Values.listeners $name -}}
{{- $entry := dict "name" $name "kind" $l.kind "address" (printf "%s:%d" $.Values.listenAddress (int $l.port)) -}}
{{- with get $l "tls" -}}
{{- $clientCa := include "egress-gateway.clientCaPaths" $ | fromJsonArray -}}
{{- $_ := set $entry "tls" (dict "cert" (printf "%s/tls.crt" $tlsDir) "key" (printf "%s/tls.key" $tlsDir) "clientCa" $clientCa "clientAuth" (default "required" (get . "clientAuth"))) -}}
{{- end -}}
{{- if eq $l.kind "sni" -}}
{{- $_ := set $entry "upstreamPort" (default 443 (get $l "upstreamPort") | int) -}}
{{- end -}}
{{- if and (eq $l.kind "transparent") (get $l "tproxy") -}}
{{- $_ := set $entry "tproxy" true -}}
{{- end -}}
{{- /* Only when set, false included; unset, the gateway's default for the kind applies. */ -}}
{{- if hasKey $l "deferAccept" -}}
{{- $_ := set $entry "deferAccept" (get $l "deferAccept") -}}
{{- end -}}
{{- if and (eq $l.kind "transparent") (hasKey $l "silentClientTimeout") -}}
{{- $_ := set $entry "silentClientTimeout" (toString (get $l "silentClientTimeout")) -}}
{{- end -}}
{{- $listeners = append $listeners $entry -}}
{{- end -}}
{{- $kube := dict "enabled" .Values.identity.kubernetes.enabled -}}
{{- if .Values.identity.kubernetes.enabled -}}
{{- with .Values.identity.kubernetes.namespace -}}{{- $_ := set $kube "namespace" . -}}{{- end -}}
{{- with .Values.identity.kubernetes.labelSelector -}}{{- $_ := set $kube "labelSelector" . -}}{{- end -}}
{{- with .Values.identity.kubernetes.maxStaleness -}}{{- $_ := set $kube "maxStaleness" . -}}{{- end -}}
{{- end -}}
{{- $identity := dict "trustDomain" .Values.identity.trustDomain "kubernetes" $kube "static" .Values.identity.static -}}
{{- $policy := dict "path" (printf "%s/%s" (include "egress-gateway.policyDir" .) (include "egress-gateway.policyKey" .)) -}}
{{- $admin := dict "address" (printf "%s:%d" .Values.listenAddress (int .Values.admin.port)) -}}
{{- $cfg := dict "listeners" $listeners "identity" $identity "policy" $policy "admin" $admin -}}
{{- range $section := list "dns" "addressGuard" "upstream" "limits" "log" "shutdown" -}}
{{- $_ := set $cfg $section (get $.Values.config $section) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Checks that JSON schema cannot express ------------------------------------------------- */}}

{{- define "egress-gateway.validate" -}}
{{- $enabled := include "egress-gateway.enabledListeners" . | fromJsonArray -}}
{{- if not $enabled -}}
{{- fail "listeners: at least one listener must have enabled: true" -}}
{{- end -}}
{{- $ports := dict (toString (int .Values.admin.port)) "admin.port" -}}
{{- $servicePorts := dict -}}
{{- range $name := $enabled -}}
{{- $l := get $.Values.listeners $name -}}
{{- $p := toString (int $l.port) -}}
{{- if hasKey $ports $p -}}
{{- fail (printf "listeners.%s.port: port %s is already used by %s" $name $p (get $ports $p)) -}}
{{- end -}}
{{- $_ := set $ports $p (printf "listeners.%s.port" $name) -}}
{{- $sp := include "egress-gateway.servicePort" $l -}}
{{- if hasKey $servicePorts $sp -}}
{{- fail (printf "listeners.%s.servicePort: Service port %s is already used by listener %s" $name $sp (get $servicePorts $sp)) -}}
{{- end -}}
{{- $_ := set $servicePorts $sp $name -}}
{{- end -}}
{{- if include "egress-gateway.anyTls" . -}}
{{- if and (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- fail "tls: a listener has tls: set tls.existingSecret to a Secret with tls.crt and tls.key, or enable tls.certManager" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled -}}
{{- fail "tls: set either tls.existingSecret or tls.certManager.enabled, not both" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.issuerRef.name: name the cert-manager Issuer or ClusterIssuer that signs the gateway's certificate" -}}
{{- end -}}
{{- if not (include "egress-gateway.clientCaPaths" . | fromJsonArray) -}}
{{- fail "tls.clientCa: a listener has tls: give at least one trust bundle (fromSecret, configMaps or secrets)" -}}
{{- end -}}
{{- end -}}
{{- if has .Release.Namespace .Values.lockdown.namespaces -}}
{{- fail (printf "lockdown.namespaces: %s is the gateway's own namespace; locking it down would cut the gateway off from the outside" .Release.Namespace) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas: %d is more than autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.lockdown.namespaces .Values.hostNetwork.enabled (not .Values.lockdown.gatewayCidrs) -}}
{{- fail "lockdown.gatewayCidrs: with hostNetwork.enabled the gateway Pods have node addresses, which a podSelector cannot match; list the egress nodes' addresses" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egress.restrict .Values.identity.kubernetes.enabled (not .Values.networkPolicy.egress.apiServer) -}}
{{- fail "networkPolicy.egress.apiServer: Pod identity watches the Kubernetes API; with networkPolicy.egress.restrict, list the API server's peers (e.g. an ipBlock)" -}}
{{- end -}}
{{- end -}}
