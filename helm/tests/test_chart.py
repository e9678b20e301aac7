"""Tests of the Helm chart in helm/egress-gateway.

Each value set in helm/tests/values is linted, rendered for the oldest Kubernetes version the chart
claims (Chart.yaml kubeVersion) and for the newest the schema package knows, validated against the
Kubernetes OpenAPI schemas of that version in strict mode, and its gateway.yaml and policy.yaml are
given to the real gateway binary. The property tests below pin the chart's promises.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART,
    CURRENT_KUBE,
    KUBE_VERSIONS,
    NAMESPACE,
    OLDEST_KUBE,
    RELEASE,
    REPO,
    VALUE_SETS,
    Rendered,
    load_values,
    render,
    render_error,
    render_set,
    run_gateway,
)

SELECTOR = {"app.kubernetes.io/name": "egress-gateway", "app.kubernetes.io/instance": RELEASE}

# Kinds that are CustomResourceDefinitions of other projects: not in the Kubernetes schemas, so
# test_crd_objects_are_well_formed checks them field by field instead.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
}

def values_with(**changes: Any) -> dict[str, Any]:
    """Default values plus nested changes given as dotted keys: values_with(**{"a.b": 1})."""
    values: dict[str, Any] = {}
    for dotted, value in changes.items():
        node = values
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return values


# Lint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_strict_lint_passes(value_set: str, kube_version: str) -> None:
    report = helm.lint(
        CHART, load_values(value_set), strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_kube_version_range_covers_the_tested_versions() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBE}-0"
    assert tuple(map(int, CURRENT_KUBE.split(".")[:2])) > tuple(map(int, OLDEST_KUBE.split(".")[:2]))


# Kubernetes schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_validates_against_the_kubernetes_schema(value_set: str, kube_version: str) -> None:
    rendered = render_set(value_set, kube_version)
    assert rendered.objects
    seen = set()
    for obj in rendered.objects:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} against {kube_version}: {path}: {e.message}")


def test_prestop_sleep_only_where_kubernetes_has_it() -> None:
    old = render_set("default", OLDEST_KUBE).container
    new = render_set("default", CURRENT_KUBE).container
    assert "lifecycle" not in old  # the sleep action exists from 1.30
    assert new["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_crd_objects_are_well_formed(value_set: str) -> None:
    rendered = render_set(value_set)
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            check_service_monitor(rendered, obj)
        elif (obj["apiVersion"], obj["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule"):
            check_prometheus_rule(obj)
        elif (obj["apiVersion"], obj["kind"]) == ("cert-manager.io/v1", "Certificate"):
            check_certificate(rendered, obj)
        else:
            # Everything else is a built-in kind, which the schema test validates.
            group = obj["apiVersion"].rpartition("/")[0]
            assert "." not in group or group.endswith(".k8s.io"), obj["apiVersion"]


GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def check_metadata(obj: dict[str, Any]) -> None:
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    meta = obj["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63
    assert all(isinstance(v, str) for v in meta.get("labels", {}).values())


def check_service_monitor(rendered: Rendered, sm: dict[str, Any]) -> None:
    check_metadata(sm)
    spec = sm["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert set(spec["selector"]) == {"matchLabels"}
    # It selects the admin Service, and only that one.
    matching = [
        s
        for s in rendered.all("Service")
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in matching] == [f"{RELEASE}-admin"]
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
    assert [p["name"] for p in matching[0]["spec"]["ports"]] == ["admin"]
    for key in ("interval", "scrapeTimeout"):
        assert GO_DURATION.match(endpoint[key]), endpoint[key]


# A Prometheus duration, as the PrometheusRule CRD's pattern for `for` has it.
PROM_DURATION = re.compile(r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$")
PROM_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_prometheus_rule(rule: dict[str, Any]) -> None:
    check_metadata(rule)
    assert set(rule["spec"]) == {"groups"}
    (group,) = rule["spec"]["groups"]
    assert set(group) == {"name", "rules"} and group["name"] == RELEASE
    assert isinstance(group["rules"], list)
    names = [r["alert"] for r in group["rules"] if "alert" in r]
    assert len(names) == len(set(names)), names
    for r in group["rules"]:
        assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, r
        assert ("alert" in r) != ("record" in r), r
        assert isinstance(r["expr"], str) and r["expr"].strip(), r
        check_promql(r["expr"])
        for key in ("for", "keep_firing_for"):
            if key in r:
                assert PROM_DURATION.match(r[key]) and r[key], r
        for name, value in r.get("labels", {}).items():
            assert PROM_LABEL_NAME.match(name) and isinstance(value, str), r
        for text in r.get("annotations", {}).values():
            # Prometheus expands these as Go templates: balanced actions, no Helm leftovers.
            assert isinstance(text, str) and text.count("{{") == text.count("}}"), text
            assert "<no value>" not in text and "%!" not in text, text
    for r in group["rules"]:
        if r.get("alert") in DEFAULT_ALERTS:
            check_default_alert(r)
    # Every metric an expression names is one the gateway exports (the rules of one's own
    # included: the value sets' are meant to be examples that work).
    for r in group["rules"]:
        for metric in promql_metrics(r["expr"]):
            assert metric == "up" or metric in exported_metrics(), (
                f"{r.get('alert') or r.get('record')}: {metric} is not a metric the gateway exports"
            )


# The chart's default alerts, and the metric each one reads.
DEFAULT_ALERTS = {
    "EgressPolicyReloadFailed": "egress_policy_reloads_total",
    "EgressTLSReloadFailed": "egress_tls_reloads_total",
    "EgressPodCacheNotSynced": "egress_pod_cache_synced",
    "EgressPodWatchFailing": "egress_pod_cache_up",
    "EgressPodCacheStale": "egress_pod_cache_stale_seconds",
    "EgressNamelessConnectionsAllowed": "egress_nameless_connections_total",
    "EgressGatewayDown": "up",
}


def check_default_alert(r: dict[str, Any]) -> None:
    assert promql_metrics(r["expr"]) == {DEFAULT_ALERTS[r["alert"]]}, r["expr"]
    assert r["labels"]["severity"]
    assert re.search(r" (==|>) [0-9]+(\.[0-9]+)?$", r["expr"]), r["expr"]
    assert set(r["annotations"]) == {"summary", "description"}
    assert "\n" not in r["annotations"]["summary"]
    # An aggregation keeps only its `by` labels: the annotations may name no others.
    by = re.match(r"^sum by \(([^)]*)\)", r["expr"])
    if by:
        kept = {label.strip() for label in by.group(1).split(",")}
        for text in r["annotations"].values():
            used = set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text))
            assert used <= kept, (r["alert"], used - kept)


def strip_promql_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_promql(expr: str) -> None:
    """What can be checked of PromQL without a parser: closed strings, balanced brackets, no
    template leftovers, range selectors with a Prometheus duration, well-formed label matchers."""
    assert "{{" not in expr and "<no value>" not in expr and "%!" not in expr, expr
    bare = strip_promql_strings(expr)
    assert '"' not in bare.replace('""', ""), f"unclosed string in {expr}"
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in bare:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], f"unbalanced {ch!r} in {expr}"
    assert not stack, f"unclosed {stack} in {expr}"
    for window in re.findall(r"\[([^\]]*)\]", bare):
        assert PROM_DURATION.match(window) and re.search("[1-9]", window), f"bad range [{window}] in {expr}"
    # Label matchers: name, operator, string.
    for matchers in re.findall(r"\{([^}]*)\}", bare):
        for matcher in filter(None, (m.strip() for m in matchers.split(","))):
            assert re.fullmatch(r'[a-zA-Z_][a-zA-Z0-9_]*\s*(=|!=|=~|!~)\s*""', matcher), f"{matcher!r} in {expr}"


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression reads (the gateway's, and Prometheus's `up`)."""
    bare = strip_promql_strings(expr)
    # Inside braces are label names, after `by`/`without` too.
    bare = re.sub(r"\{[^}]*\}", "{}", bare)
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", "", bare)
    return set(re.findall(r"\b(egress_[a-z0-9_]+|up)\b", bare))


def documented_metrics() -> set[str]:
    """The metrics docs/configuration.md documents: the first column of the tables of its Metrics
    section."""
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(egress_[a-z0-9_]+)` \|", section, re.M))


def registered_metrics() -> set[str]:
    """The metrics gateway/src/metrics.rs registers, with the `_total` a counter is exported with
    (prometheus-client adds it to a counter's name)."""
    source = (REPO / "gateway" / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'register\(\s*"(egress_[a-z0-9_]+)"', source))
    return names | {f"{n}_total" for n in names}


@functools.lru_cache(maxsize=None)
def exported_metrics() -> frozenset[str]:
    return frozenset(documented_metrics() & registered_metrics())


def check_certificate(rendered: Rendered, cert: dict[str, Any]) -> None:
    check_metadata(cert)
    spec = cert["spec"]
    assert set(spec) <= {
        "secretName", "dnsNames", "duration", "renewBefore", "usages", "privateKey", "issuerRef",
    }
    # Its Secret is the one the Pod mounts for its TLS listeners.
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == spec["secretName"]
    svc = RELEASE
    for name in (svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"):
        assert name in spec["dnsNames"]
    assert set(spec["issuerRef"]) == {"name", "kind", "group"} and spec["issuerRef"]["name"]
    assert spec["issuerRef"]["kind"] in {"Issuer", "ClusterIssuer"}
    assert GO_DURATION.match(spec["duration"]) and GO_DURATION.match(spec["renewBefore"])
    assert set(spec["usages"]) <= {"server auth", "digital signature", "key encipherment"}
    assert "server auth" in spec["usages"]
    assert spec["privateKey"]["algorithm"] in {"ECDSA", "RSA", "Ed25519"}
    assert spec["privateKey"]["rotationPolicy"] == "Always"


# The real binary ------------------------------------------------------------------------------

# Objects that a value set expects to exist in the cluster already (not rendered by the chart).
POLICY_IN_EXISTING_CONFIGMAP = """\
version: 1
rules:
  - name: ci-to-github
    action: allow
    from:
      - namespace: ci
    to:
      - host: github.com
        ports: [443]
"""


def external_objects(dev_pki: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        # `kubectl create secret tls`: no ca.crt.
        "secret/gateway-tls": {"tls.crt": dev_pki["tls.crt"], "tls.key": dev_pki["tls.key"]},
        "configmap/spire-bundle": {"bundle.crt": dev_pki["ca.crt"]},
        "secret/corp.vm-ca": {"ca.pem": dev_pki["ca.crt"]},
        "configmap/egress-policy": {"rules.yaml": POLICY_IN_EXISTING_CONFIGMAP},
    }


def materialise_pod_files(rendered: Rendered, root: Path, dev_pki: dict[str, str]) -> None:
    """Lay out under root the files the gateway container would see: every volume mount, filled
    from the rendered ConfigMaps, the Secret cert-manager would write for the rendered Certificate,
    or the objects a value set expects to exist."""
    external = external_objects(dev_pki)
    cert_secrets = {c["spec"]["secretName"] for c in rendered.all("Certificate")}
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    for mount in rendered.container["volumeMounts"]:
        assert "subPath" not in mount, f"{mount['name']} is a subPath mount: it would never update"
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            data = rendered.configmap_data(name) or external[f"configmap/{name}"]
        else:
            name = volume["secret"]["secretName"]
            data = dev_pki if name in cert_secrets else external[f"secret/{name}"]
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for key, content in data.items():
            (target / key).write_text(content)


def relocate(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """gateway.yaml with every file path moved under root."""
    config = copy.deepcopy(config)

    def moved(path: str) -> str:
        assert path.startswith("/etc/egress/"), path
        return str(root / path.lstrip("/"))

    config["policy"]["path"] = moved(config["policy"]["path"])
    for listener in config["listeners"]:
        tls = listener.get("tls")
        if tls:
            tls["cert"], tls["key"] = moved(tls["cert"]), moved(tls["key"])
            ca = tls["clientCa"]
            tls["clientCa"] = [moved(p) for p in ca] if isinstance(ca, list) else moved(ca)
    return config


def container_env_overrides(rendered: Rendered, pod_ip: str) -> dict[str, str]:
    """The EGRESS_GATEWAY__ variables of the container, with $(POD_IP) expanded as the kubelet
    would."""
    env = {}
    for var in rendered.container.get("env", []):
        if var["name"] == "POD_IP":
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        elif var["name"].startswith("EGRESS_GATEWAY__"):
            env[var["name"]] = var["value"].replace("$(POD_IP)", pod_ip)
    return env


def assert_binary_accepts(
    rendered: Rendered, what: str, gateway_bin: Path, dev_pki: dict[str, str], root: Path,
    pod_ip: str = "10.20.0.11",
) -> None:
    """`egress-gateway config validate` accepts the rendered gateway.yaml, with the Pod's files
    laid out under root and the container's environment overrides."""
    materialise_pod_files(rendered, root, dev_pki)
    config_file = root / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(relocate(rendered.gateway_yaml, root)))
    env = container_env_overrides(rendered, pod_ip)
    result = run_gateway(gateway_bin, "config", "validate", str(config_file), env=env)
    assert result.returncode == 0, (
        f"config validate refused the gateway.yaml of {what}:\n{result.stderr}\n"
        f"--- gateway.yaml ---\n{rendered.gateway_yaml_text}\n--- env ---\n{env}"
    )
    assert "valid" in result.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_gateway_yaml_is_accepted_by_the_binary(
    value_set: str, gateway_bin: Path, dev_pki: dict[str, str], tmp_path: Path
) -> None:
    ipv6 = load_values(value_set).get("hostNetwork", {}).get("podIPFamily") == "IPv6"
    assert_binary_accepts(
        render_set(value_set), value_set, gateway_bin, dev_pki, tmp_path,
        pod_ip="fd00:10::5" if ipv6 else "10.20.0.11",
    )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_policy_is_accepted_by_the_binary(
    value_set: str, gateway_bin: Path, dev_pki: dict[str, str], tmp_path: Path
) -> None:
    rendered = render_set(value_set)
    materialise_pod_files(rendered, tmp_path, dev_pki)
    policy_path = tmp_path / rendered.gateway_yaml["policy"]["path"].lstrip("/")
    result = run_gateway(gateway_bin, "policy", "validate", str(policy_path))
    assert result.returncode == 0, f"{value_set}: {result.stdout}{result.stderr}"


def test_a_bad_policy_in_values_is_caught_by_the_binary(gateway_bin: Path, tmp_path: Path) -> None:
    # The chart ships the policy as given; the binary is the validator (docs/deploy.md says to run
    # `policy validate` before an upgrade). This shows that check catches what Helm cannot.
    rendered = render(values_with(policy={"version": 1, "rules": [{"name": "x", "action": "allow"}]}))
    path = tmp_path / "policy.yaml"
    path.write_text(rendered.policy_text)
    result = run_gateway(gateway_bin, "policy", "validate", str(path))
    assert result.returncode == 2 and "from" in result.stderr


def test_policy_text_is_shipped_verbatim() -> None:
    text = load_values("policy-text")["policy"]
    assert render_set("policy-text").policy_text == text


# RBAC and the ServiceAccount token -----------------------------------------------------------

RBAC_KINDS = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rbac_exists_exactly_when_pod_identity_is_on(value_set: str) -> None:
    rendered = render_set(value_set)
    identity_on = load_values(value_set).get("identity", {}).get("kubernetes", {}).get("enabled", False)
    rbac = [o for o in rendered.objects if o["kind"] in RBAC_KINDS]
    token = rendered.pod_spec["automountServiceAccountToken"]
    sa = rendered.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is identity_on
    assert token is identity_on
    if not identity_on:
        assert rbac == []
        return
    roles = [o for o in rbac if o["kind"] in {"Role", "ClusterRole"}]
    bindings = [o for o in rbac if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert len(roles) == 1 and len(bindings) == 1
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = bindings[0]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": roles[0]["kind"],
        "name": roles[0]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    scope = load_values(value_set)["identity"]["kubernetes"].get("namespace")
    if scope:
        assert [roles[0]["kind"], binding["kind"]] == ["Role", "RoleBinding"]
        assert roles[0]["metadata"]["namespace"] == scope == binding["metadata"]["namespace"]
        assert rendered.gateway_yaml["identity"]["kubernetes"]["namespace"] == scope
    else:
        assert [roles[0]["kind"], binding["kind"]] == ["ClusterRole", "ClusterRoleBinding"]
        assert "namespace" not in roles[0]["metadata"]
    assert rendered.gateway_yaml["identity"]["kubernetes"]["enabled"] is True


def test_rbac_create_false_renders_no_rbac() -> None:
    rendered = render(values_with(**{"identity.kubernetes.enabled": True, "rbac.create": False}))
    assert not [o for o in rendered.objects if o["kind"] in RBAC_KINDS]


# Security context ----------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_security_context(value_set: str) -> None:
    rendered = render_set(value_set)
    pod, container = rendered.pod_spec, rendered.container
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostPID" not in pod and "hostIPC" not in pod
    tproxy = any(listener.get("tproxy") for listener in rendered.gateway_yaml["listeners"])
    mark = (rendered.gateway_yaml.get("upstream") or {}).get("mark") is not None
    if tproxy or mark:
        # NET_ADMIN works only for UID 0 in Kubernetes (no ambient capabilities): the one exception.
        assert sc["capabilities"]["add"] == ["NET_ADMIN"]
        assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
        assert pod["securityContext"]["runAsUser"] == 0 and pod["securityContext"]["runAsNonRoot"] is False
    else:
        assert "add" not in sc["capabilities"]
        assert sc["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
        assert sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532


def test_net_admin_is_added_only_for_tproxy() -> None:
    transparent = {"listeners": {"transparent": {"enabled": True}}}
    assert "add" not in render(transparent).container["securityContext"]["capabilities"]
    transparent["listeners"]["transparent"]["tproxy"] = True
    rendered = render(transparent)
    assert rendered.container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert rendered.gateway_yaml["listeners"][1] == {
        "name": "transparent", "kind": "transparent", "address": "0.0.0.0:15001", "tproxy": True,
    }
    # tproxy on a disabled listener adds nothing.
    off = {"listeners": {"transparent": {"enabled": False, "tproxy": True}}}
    assert "add" not in render(off).container["securityContext"]["capabilities"]


# How the transparent listener is set up, and whether it needs NET_ADMIN (IP_TRANSPARENT).
TRANSPARENT_SETUPS = {
    "none": ({}, False),
    "redirect": ({"transparent": {"enabled": True}}, False),
    "tproxy": ({"transparent": {"enabled": True, "tproxy": True}}, True),
    "tproxy-disabled": ({"transparent": {"enabled": False, "tproxy": True}}, False),
}
# upstream.mark as given in the values, and whether it needs NET_ADMIN (SO_MARK).
MARKS = {"absent": (None, False), "null": ({"mark": None}, False), "0x2000": ({"mark": 0x2000}, True),
         "max": ({"mark": 4294967295}, True)}


@pytest.mark.parametrize("mark", MARKS)
@pytest.mark.parametrize("setup", TRANSPARENT_SETUPS)
def test_net_admin_is_added_exactly_for_tproxy_or_upstream_mark(setup: str, mark: str) -> None:
    listeners, needs_tproxy = TRANSPARENT_SETUPS[setup]
    upstream, needs_mark = MARKS[mark]
    values: dict[str, Any] = {"listeners": copy.deepcopy(listeners)}
    if upstream is not None:
        values["config"] = {"upstream": upstream}
    rendered = render(values)
    pod_sc, sc = rendered.pod_spec["securityContext"], rendered.container["securityContext"]
    if needs_tproxy or needs_mark:
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
        # Added capabilities reach UID 0 only; everything else stays locked down.
        for context in (pod_sc, sc):
            assert context["runAsUser"] == 0 and context["runAsGroup"] == 0 and context["runAsNonRoot"] is False
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
        assert sc["readOnlyRootFilesystem"] is True
    else:
        assert sc["capabilities"] == {"drop": ["ALL"]}
        for context in (pod_sc, sc):
            assert context["runAsUser"] == 65532 and context["runAsGroup"] == 65532
            assert context["runAsNonRoot"] is True
    assert pod_sc["fsGroup"] == 65532
    # The mark reaches gateway.yaml as the same integer; unset, it is null or absent.
    rendered_mark = rendered.gateway_yaml["upstream"].get("mark")
    if needs_mark:
        assert rendered_mark == upstream["mark"] and type(rendered_mark) is int
    else:
        assert rendered_mark is None


def test_upstream_mark_value_set_marks_without_tproxy() -> None:
    rendered = render_set("upstream-mark")
    assert rendered.gateway_yaml["upstream"]["mark"] == 0x2000
    assert not any(listener.get("tproxy") for listener in rendered.gateway_yaml["listeners"])
    assert rendered.container["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]


def test_image_runs_as_the_charts_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] == "65532:65532"
    assert "--locked" in dockerfile and "-p egress-gateway" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "target" in [i.strip("/") for i in ignored] and ".git" in ignored


# Deployment shape ----------------------------------------------------------------------------


def test_default_deployment_is_highly_available() -> None:
    rendered = render_set("default")
    dep = rendered.one("Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert dep["spec"]["selector"]["matchLabels"] == SELECTOR
    spread = rendered.pod_spec["topologySpreadConstraints"]
    by_node = [c for c in spread if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert by_node[0]["labelSelector"]["matchLabels"] == SELECTOR
    pdb = rendered.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == SELECTOR
    res = rendered.container["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


def test_probes_use_the_admin_port() -> None:
    rendered = render_set("default")
    c = rendered.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert {"name": "admin", "containerPort": 9901, "protocol": "TCP"} in c["ports"]
    assert rendered.gateway_yaml["admin"] == {"address": "0.0.0.0:9901"}


def test_hpa_owns_the_replica_count() -> None:
    rendered = render_set("hpa")
    assert "replicas" not in rendered.one("Deployment")["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert rendered.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 2, "selector": {"matchLabels": SELECTOR},
    }
    assert render_set("default").all("HorizontalPodAutoscaler") == []


@pytest.mark.parametrize(
    "drain, expected_floor",
    [("30s", 30), ("500ms", 1), ("2m", 120), ("1m 30s", 90), ("1h", 3600)],
)
def test_termination_grace_period_exceeds_the_drain_period(drain: str, expected_floor: int) -> None:
    rendered = render(values_with(**{"config.shutdown.drainTimeout": drain}))
    grace = rendered.pod_spec["terminationGracePeriodSeconds"]
    prestop = rendered.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # SIGTERM comes after the preStop sleep; the gateway drains, then waits up to 5 s more.
    assert grace > prestop + expected_floor + 5
    assert rendered.gateway_yaml["shutdown"]["drainTimeout"] == drain


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_termination_grace_period_of_every_value_set(value_set: str) -> None:
    for kube in KUBE_VERSIONS:
        rendered = render_set(value_set, kube)
        drain = rendered.gateway_yaml["shutdown"]["drainTimeout"]
        seconds = sum(
            int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", drain)
        )
        prestop = rendered.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert rendered.pod_spec["terminationGracePeriodSeconds"] > prestop + seconds + 5


def test_a_too_short_termination_grace_period_is_refused() -> None:
    message = render_error(values_with(terminationGracePeriodSeconds=30))
    assert "terminationGracePeriodSeconds" in message and "drainTimeout" in message


# Hot reload: what rolls the Pods and what does not -------------------------------------------


def pod_template(values: dict[str, Any]) -> dict[str, Any]:
    return render(values).one("Deployment")["spec"]["template"]


def test_a_policy_change_does_not_change_the_pod_template() -> None:
    before = render(values_with())
    after = render(values_with(policy={"version": 1, "mode": "audit", "rules": []}))
    assert before.policy_text != after.policy_text
    assert before.one("Deployment")["spec"]["template"] == after.one("Deployment")["spec"]["template"]


def test_a_gateway_config_change_changes_the_pod_template() -> None:
    before = pod_template(values_with())
    after = pod_template(values_with(**{"config.log.level": "debug"}))
    key = "checksum/config"
    assert before["metadata"]["annotations"][key] != after["metadata"]["annotations"][key]


def test_the_checksum_covers_exactly_the_rendered_gateway_yaml() -> None:
    import hashlib

    rendered = render_set("mtls-existing-secret")
    digest = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert digest == hashlib.sha256(rendered.gateway_yaml_text.rstrip("\n").encode()).hexdigest()


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_policy_is_a_directory_mount_that_gateway_yaml_points_into(value_set: str) -> None:
    rendered = render_set(value_set)
    policy_path = Path(rendered.gateway_yaml["policy"]["path"])
    mounts = {m["mountPath"]: m for m in rendered.container["volumeMounts"]}
    mount = mounts[str(policy_path.parent)]
    assert "subPath" not in mount and "subPathExpr" not in mount
    volume = {v["name"]: v for v in rendered.pod_spec["volumes"]}[mount["name"]]
    existing = load_values(value_set).get("existingPolicyConfigMap", {})
    if existing.get("name"):
        assert volume["configMap"] == {"name": existing["name"]}
        assert policy_path.name == existing["key"]
        assert rendered.policy_text is None
    else:
        assert volume["configMap"] == {"name": f"{RELEASE}-policy"}
        assert policy_path.name == "policy.yaml"
    # No mount at all uses subPath: Secrets (certificates) must update in place too.
    assert not [m for m in rendered.container["volumeMounts"] if "subPath" in m]
    assert rendered.container["args"] == ["run", "--config", "/etc/egress/config/gateway.yaml"]


# Services ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_one_service_port_per_enabled_listener_and_admin_apart(value_set: str) -> None:
    rendered = render_set(value_set)
    listeners = rendered.gateway_yaml["listeners"]
    proxy = rendered.one("Service", RELEASE)
    admin = rendered.one("Service", f"{RELEASE}-admin")
    assert [p["name"] for p in proxy["spec"]["ports"]] == [l["name"] for l in listeners]
    assert "admin" not in [p["name"] for p in proxy["spec"]["ports"]]
    assert 9901 not in [p["port"] for p in proxy["spec"]["ports"]]
    container_ports = {p["name"]: p["containerPort"] for p in rendered.container["ports"]}
    for port, listener in zip(proxy["spec"]["ports"], listeners):
        assert port["targetPort"] == listener["name"]
        assert container_ports[listener["name"]] == int(listener["address"].rsplit(":", 1)[1])
    assert admin["spec"]["ports"] == [{"name": "admin", "port": 9901, "targetPort": "admin", "protocol": "TCP"}]
    assert proxy["spec"]["selector"] == SELECTOR == admin["spec"]["selector"]


def test_sni_listener_serves_port_443_and_dials_upstream_443() -> None:
    rendered = render_set("transparent-sni")
    ports = {p["name"]: p for p in rendered.one("Service", RELEASE)["spec"]["ports"]}
    assert ports["sni"]["port"] == 443 and ports["sni"]["targetPort"] == "sni"
    sni = [l for l in rendered.gateway_yaml["listeners"] if l["name"] == "sni"][0]
    assert sni == {"name": "sni", "kind": "sni", "address": "0.0.0.0:8443", "upstreamPort": 443}


# Listener socket options ---------------------------------------------------------------------


def listener_entries(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {l["name"]: l for l in rendered.gateway_yaml["listeners"]}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_socket_options_reach_gateway_yaml_only_when_set(value_set: str) -> None:
    # Unset, they are left out, so the gateway's defaults for the kind apply; set, they are
    # rendered as given, deferAccept: false included.
    values = load_values(value_set).get("listeners", {})
    for name, entry in listener_entries(render_set(value_set)).items():
        given = values.get(name, {})
        for key in ("deferAccept", "silentClientTimeout"):
            if key in given:
                assert entry[key] == given[key] and type(entry[key]) is type(given[key]), (name, key)
            else:
                assert key not in entry, (name, key)


def test_listener_socket_options_value_set() -> None:
    entries = listener_entries(render_set("listener-socket-options"))
    assert entries["proxy"] == {
        "name": "proxy", "kind": "connect", "address": "0.0.0.0:3128", "deferAccept": False,
    }
    assert entries["transparent"] == {
        "name": "transparent", "kind": "transparent", "address": "0.0.0.0:15001",
        "deferAccept": True, "silentClientTimeout": "300ms",
    }
    assert entries["sni"] == {
        "name": "sni", "kind": "sni", "address": "0.0.0.0:8443", "upstreamPort": 443, "deferAccept": True,
    }
    # The default entries set neither.
    every = render({"listeners": {"transparent": {"enabled": True}, "sni": {"enabled": True}}})
    for entry in listener_entries(every).values():
        assert "deferAccept" not in entry and "silentClientTimeout" not in entry


@pytest.mark.parametrize("listener", ["proxy", "transparent", "sni"])
@pytest.mark.parametrize("defer", [True, False])
def test_defer_accept_is_rendered_true_or_false(listener: str, defer: bool) -> None:
    entries = listener_entries(render({"listeners": {listener: {"enabled": True, "deferAccept": defer}}}))
    assert entries[listener]["deferAccept"] is defer
    # Only on the listener it was given for.
    assert all("deferAccept" not in e for name, e in entries.items() if name != listener)


def test_socket_options_from_set_flags() -> None:
    # `--set listeners.proxy.deferAccept=false` gives the boolean false, which must still render.
    values = helm.parse_set_string(
        "listeners.proxy.deferAccept=false,listeners.transparent.enabled=true,"
        "listeners.transparent.silentClientTimeout=500ms"
    )
    entries = listener_entries(render(values))
    assert entries["proxy"]["deferAccept"] is False
    assert entries["transparent"]["silentClientTimeout"] == "500ms"


@pytest.mark.parametrize("timeout", ["300ms", "1s", "2m", "1m 30s", "1s500ms"])
def test_silent_client_timeout_on_a_transparent_listener_is_accepted_by_the_binary(
    timeout: str, gateway_bin: Path, dev_pki: dict[str, str], tmp_path: Path
) -> None:
    # Every value the schema lets through is one the gateway takes.
    rendered = render({"listeners": {"transparent": {"enabled": True, "silentClientTimeout": timeout}}})
    assert listener_entries(rendered)["transparent"]["silentClientTimeout"] == timeout
    assert "silentClientTimeout" not in listener_entries(rendered)["proxy"]
    assert_binary_accepts(rendered, f"silentClientTimeout {timeout!r}", gateway_bin, dev_pki, tmp_path)


@pytest.mark.parametrize(
    "listener, values",
    [
        ("proxy", {"kind": "connect", "port": 3128}),
        ("proxy-mtls", {"enabled": True}),
        ("sni", {"enabled": True}),
        ("extra", {"kind": "sni", "port": 8444}),
    ],
)
def test_silent_client_timeout_is_refused_off_transparent_listeners(listener: str, values: dict[str, Any]) -> None:
    # The gateway refuses it too ("silentClientTimeout applies only to 'transparent' listeners").
    bad = {"listeners": {listener: {**values, "silentClientTimeout": "1s"}}, "tls": {"existingSecret": "s"}}
    message = render_error(bad)
    assert f"/listeners/{listener}/kind" in message and "transparent" in message, message
    assert helm.lint(CHART, bad, strict=True, namespace=NAMESPACE)["errors"]


@pytest.mark.parametrize(
    "listener, timeout, error",
    [
        ("proxy", "1s", "silentClientTimeout applies only to 'transparent' listeners"),
        ("sni", "1s", "silentClientTimeout applies only to 'transparent' listeners"),
        ("transparent", "0s", "silentClientTimeout must be greater than zero"),
    ],
)
def test_the_binary_refuses_what_the_schema_refuses(
    listener: str, timeout: str, error: str, gateway_bin: Path, tmp_path: Path
) -> None:
    # The schema's rules are the gateway's own: the same gateway.yaml, edited past the schema.
    rendered = render({"listeners": {"transparent": {"enabled": True}, "sni": {"enabled": True}}})
    config = rendered.gateway_yaml
    (entry,) = [l for l in config["listeners"] if l["name"] == listener]
    entry["silentClientTimeout"] = timeout
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(relocate(config, tmp_path)))
    result = run_gateway(gateway_bin, "config", "validate", str(config_file))
    assert result.returncode == 2 and error in result.stderr, result.stderr


@pytest.mark.parametrize("timeout", ["300", "1 second", "1.5s", "-1s", "1d", "", "0s", "0ms", "00m 0s", 1])
def test_silent_client_timeout_must_be_a_duration_above_zero(timeout: Any) -> None:
    bad = {"listeners": {"transparent": {"enabled": True, "silentClientTimeout": timeout}}}
    message = render_error(bad)
    assert "/listeners/transparent/silentClientTimeout" in message, message
    assert helm.lint(CHART, bad, strict=True, namespace=NAMESPACE)["errors"]


# TLS -----------------------------------------------------------------------------------------


def test_mtls_with_an_existing_secret() -> None:
    rendered = render_set("mtls-existing-secret")
    assert rendered.all("Certificate") == []
    (mtls,) = [l for l in rendered.gateway_yaml["listeners"] if "tls" in l]
    assert mtls["tls"] == {
        "cert": "/etc/egress/tls/tls.crt",
        "key": "/etc/egress/tls/tls.key",
        "clientCa": [
            "/etc/egress/client-ca/configmap-spire-bundle/bundle.crt",
            "/etc/egress/client-ca/secret-corp.vm-ca/ca.pem",
        ],
        "clientAuth": "required",
    }
    volumes = {v["name"]: v for v in rendered.pod_spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "gateway-tls"
    assert "HTTPS_PROXY=https://egress-gateway.egress.svc:3129" in rendered.notes


def test_mtls_with_cert_manager() -> None:
    rendered = render_set("mtls-cert-manager")
    cert = rendered.one("Certificate")
    assert cert["spec"]["issuerRef"] == {"name": "egress-gateway-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert "egress.corp.example" in cert["spec"]["dnsNames"]
    (listener,) = rendered.gateway_yaml["listeners"]
    assert listener["tls"]["clientCa"] == ["/etc/egress/tls/ca.crt"]
    assert listener["tls"]["clientAuth"] == "optional"


def test_no_tls_objects_without_a_tls_listener() -> None:
    rendered = render(values_with(**{"tls.certManager.enabled": True, "tls.certManager.issuerRef.name": "x"}))
    assert rendered.all("Certificate") == []
    assert "tls" not in {v["name"] for v in rendered.pod_spec["volumes"]}


# NetworkPolicies -----------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["lockdown", "host-network"])
def test_lockdown_allows_only_dns_and_the_gateway(value_set: str) -> None:
    rendered = render_set(value_set)
    values = load_values(value_set)
    namespaces = values["lockdown"]["namespaces"]
    lockdowns = [o for o in rendered.all("NetworkPolicy") if o["metadata"]["name"].endswith("-lockdown")]
    assert sorted(o["metadata"]["namespace"] for o in lockdowns) == sorted(namespaces)
    listener_ports = sorted(int(l["address"].rsplit(":", 1)[1]) for l in rendered.gateway_yaml["listeners"])
    for policy in lockdowns:
        spec = policy["spec"]
        assert spec["podSelector"] == {}  # every Pod of the namespace
        assert spec["policyTypes"] == ["Egress"]
        assert "ingress" not in spec
        dns, gateway = spec["egress"]
        assert dns == {
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
        assert sorted(p["port"] for p in gateway["ports"]) == listener_ports
        assert all(p["protocol"] == "TCP" for p in gateway["ports"])
        if values.get("hostNetwork", {}).get("enabled"):
            assert gateway["to"] == [{"ipBlock": {"cidr": c}} for c in values["lockdown"]["gatewayCidrs"]]
        else:
            assert gateway["to"] == [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "podSelector": {"matchLabels": SELECTOR},
            }]


def test_no_lockdown_policies_by_default() -> None:
    names = [o["metadata"]["name"] for o in render_set("default").all("NetworkPolicy")]
    assert names == [RELEASE]


def test_gateway_network_policy() -> None:
    default = render_set("default").one("NetworkPolicy", RELEASE)["spec"]
    assert default["podSelector"] == {"matchLabels": SELECTOR}
    assert default["policyTypes"] == ["Ingress"]  # egress open by default
    listeners, admin = default["ingress"]
    assert listeners == {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 3128}]}
    assert admin["ports"] == [{"protocol": "TCP", "port": 9901}]
    assert admin["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    restricted = render_set("pod-identity-namespace").one("NetworkPolicy", RELEASE)["spec"]
    assert restricted["policyTypes"] == ["Ingress", "Egress"]
    dns, api, out = restricted["egress"]
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert out["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 5432}]
    assert "10.0.0.0/8" in out["to"][0]["ipBlock"]["except"]


def test_restricted_egress_with_pod_identity_needs_the_api_server() -> None:
    message = render_error(values_with(**{
        "identity.kubernetes.enabled": True, "networkPolicy.egress.restrict": True,
    }))
    assert "networkPolicy.egress.apiServer" in message


# hostNetwork ---------------------------------------------------------------------------------


def test_host_network() -> None:
    rendered = render_set("host-network")
    pod = rendered.pod_spec
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"] == {"node-role.example/egress": "true"}
    assert pod["tolerations"][0]["key"] == "node-role.example/egress"
    env = container_env_overrides(rendered, "10.20.0.11")
    # The gateway reads override values as YAML.
    assert {k: yaml.safe_load(v) for k, v in env.items()} == {
        "EGRESS_GATEWAY__LISTENERS__0__ADDRESS": "10.20.0.11:3128",
        "EGRESS_GATEWAY__ADMIN__ADDRESS": "10.20.0.11:9901",
    }
    assert "203.0.113.11, 203.0.113.12" in rendered.notes
    assert "hostNetwork" in rendered.notes
    assert "hostNetwork" not in render_set("default").pod_spec


def test_host_network_ipv6_brackets_the_pod_ip() -> None:
    env = container_env_overrides(render_set("host-network-ipv6"), "fd00:10::5")
    assert yaml.safe_load(env["EGRESS_GATEWAY__ADMIN__ADDRESS"]) == "[fd00:10::5]:9901"


def test_host_network_env_indexes_follow_the_listener_order() -> None:
    values = {
        "hostNetwork": {"enabled": True},
        "listeners": {"transparent": {"enabled": True}, "sni": {"enabled": True}},
    }
    rendered = render(values)
    env = container_env_overrides(rendered, "10.0.0.9")
    kinds = set()
    for i, listener in enumerate(rendered.gateway_yaml["listeners"]):
        kinds.add(listener["kind"])
        port = listener["address"].rsplit(":", 1)[1]
        key = f"EGRESS_GATEWAY__LISTENERS__{i}__ADDRESS"
        if listener["kind"] == "transparent":
            # Redirected connections arrive on the incoming interface's address (or 127.0.0.1),
            # never necessarily the node's InternalIP: the listener keeps the wildcard address.
            assert key not in env
            assert listener["address"].startswith("0.0.0.0:")
        else:
            assert yaml.safe_load(env[key]) == f"10.0.0.9:{port}"
    assert kinds == {"connect", "transparent", "sni"}


def test_host_network_lockdown_needs_the_node_addresses() -> None:
    message = render_error({"hostNetwork": {"enabled": True}, "lockdown": {"namespaces": ["a"]}})
    assert "lockdown.gatewayCidrs" in message


# PrometheusRule ------------------------------------------------------------------------------

SCRAPED = 'job="egress-gateway-admin",namespace="egress"'  # the ServiceMonitor's targets


def alert_rules(rendered: Rendered) -> dict[str, dict[str, Any]]:
    (group,) = rendered.one("PrometheusRule")["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"] if "alert" in r}


def prometheus_rule_values(**changes: Any) -> dict[str, Any]:
    values = values_with(**changes)
    values.setdefault("prometheusRule", {})["enabled"] = True
    return values


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_prometheus_rule_exists_exactly_when_enabled(value_set: str) -> None:
    enabled = load_values(value_set).get("prometheusRule", {}).get("enabled", False)
    assert len(render_set(value_set).all("PrometheusRule")) == (1 if enabled else 0)


def test_prometheus_rule_namespace_and_labels() -> None:
    rule = render(prometheus_rule_values()).one("PrometheusRule")
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"].items() >= SELECTOR.items()
    rule = render_set("prometheus-rule").one("PrometheusRule")
    assert rule["metadata"]["name"] == RELEASE
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"].items() >= SELECTOR.items()


def test_every_default_alert_with_every_feature() -> None:
    alerts = alert_rules(render_set("prometheus-rule"))
    expected = {
        "EgressPolicyReloadFailed": f'increase(egress_policy_reloads_total{{{SCRAPED},result="error"}}[10m]) > 0',
        "EgressTLSReloadFailed": f'increase(egress_tls_reloads_total{{{SCRAPED},result="error"}}[10m]) > 0',
        "EgressPodCacheNotSynced": f"egress_pod_cache_synced{{{SCRAPED}}} == 0",
        "EgressPodWatchFailing": f"egress_pod_cache_up{{{SCRAPED}}} == 0",
        # Half of identity.kubernetes.maxStaleness (2m).
        "EgressPodCacheStale": f"egress_pod_cache_stale_seconds{{{SCRAPED}}} > 60",
        "EgressNamelessConnectionsAllowed": (
            "sum by (namespace, listener, cause) "
            f'(increase(egress_nameless_connections_total{{{SCRAPED},decision="allow"}}[1h])) > 0'
        ),
        "EgressGatewayDown": f"up{{{SCRAPED}}} == 0",
    }
    # The default alerts, then the value set's own rules.
    assert list(alerts) == [*expected, "EgressDeniedConnectionsHigh"]
    for name, expr in expected.items():
        assert alerts[name]["expr"] == expr, name
    fors = {name: alerts[name]["for"] for name in expected}
    assert fors == {
        "EgressPolicyReloadFailed": "0m", "EgressTLSReloadFailed": "0m", "EgressPodCacheNotSynced": "10m",
        "EgressPodWatchFailing": "5m", "EgressPodCacheStale": "0m", "EgressNamelessConnectionsAllowed": "0m",
        "EgressGatewayDown": "5m",
    }
    for name in expected:
        labels = alerts[name]["labels"]
        assert labels == {"severity": "critical" if name == "EgressPodCacheStale" else "warning", "team": "platform"}
    assert "2m" in alerts["EgressPodCacheStale"]["annotations"]["description"]
    assert "maxStaleness" in alerts["EgressPodWatchFailing"]["annotations"]["description"]


def test_alerts_follow_the_features_that_export_their_metrics() -> None:
    # Only the policy is always there.
    assert list(alert_rules(render(prometheus_rule_values()))) == ["EgressPolicyReloadFailed"]
    # Unscoped without a ServiceMonitor (no job label is known), and no `up` alert then.
    (only,) = alert_rules(render(prometheus_rule_values())).values()
    assert only["expr"] == 'increase(egress_policy_reloads_total{result="error"}[10m]) > 0'
    # The egress_pod_cache_* metrics exist only with Pod identity; the stale alert needs a threshold.
    identity = alert_rules(render(prometheus_rule_values(**{"identity.kubernetes.enabled": True})))
    assert list(identity) == ["EgressPolicyReloadFailed", "EgressPodCacheNotSynced", "EgressPodWatchFailing"]
    assert "maxStaleness" not in identity["EgressPodWatchFailing"]["annotations"]["description"]
    no_identity = render(prometheus_rule_values(**{"prometheusRule.alerts.podCacheStale.threshold": "1m"}))
    assert "EgressPodCacheStale" not in alert_rules(no_identity)
    stale = alert_rules(render(prometheus_rule_values(**{
        "identity.kubernetes.enabled": True, "identity.kubernetes.maxStaleness": "1m 30s",
    })))["EgressPodCacheStale"]
    assert stale["expr"] == "egress_pod_cache_stale_seconds > 45"
    # TLS reloads only with an enabled listener that has `tls:`.
    tls = prometheus_rule_values(**{"listeners.proxy-mtls.enabled": True, "tls.existingSecret": "s"})
    assert "EgressTLSReloadFailed" in alert_rules(render(tls))
    # Nameless connections only with an enabled transparent or sni listener.
    for listener in ("transparent", "sni"):
        alerts = alert_rules(render(prometheus_rule_values(**{f"listeners.{listener}.enabled": True})))
        assert list(alerts) == ["EgressPolicyReloadFailed", "EgressNamelessConnectionsAllowed"]
    # `up` only when the job is known.
    monitored = alert_rules(render(prometheus_rule_values(**{"serviceMonitor.enabled": True})))
    assert monitored["EgressGatewayDown"]["expr"] == f"up{{{SCRAPED}}} == 0"


def test_the_scrape_labels_follow_the_release_name_and_the_service_monitor() -> None:
    values = prometheus_rule_values(**{"serviceMonitor.enabled": True, "fullnameOverride": "egw"})
    rendered = render(values)
    service = rendered.one("Service", "egw-admin")
    assert service["metadata"]["labels"].items() >= rendered.one("ServiceMonitor")["spec"]["selector"]["matchLabels"].items()
    # The Prometheus Operator names the job after the Service, as the ServiceMonitor sets no jobLabel.
    assert "jobLabel" not in rendered.one("ServiceMonitor")["spec"]
    for rule in alert_rules(rendered).values():
        assert 'job="egw-admin",namespace="egress"' in rule["expr"], rule["expr"]


def test_an_explicit_selector_scopes_every_alert() -> None:
    values = {
        "prometheusRule": {"enabled": True, "selector": 'job="egress", cluster="eu-1",'},
        "identity": {"kubernetes": {"enabled": True, "maxStaleness": "2m"}},
        "listeners": {"sni": {"enabled": True}, "proxy-mtls": {"enabled": True}},
        "tls": {"existingSecret": "s"},
    }
    alerts = alert_rules(render(values))
    assert set(alerts) == set(DEFAULT_ALERTS)
    for rule in alerts.values():
        assert 'job="egress", cluster="eu-1"' in rule["expr"] and ",," not in rule["expr"], rule["expr"]
        check_promql(rule["expr"])
    assert alerts["EgressGatewayDown"]["expr"] == 'up{job="egress", cluster="eu-1"} == 0'


def test_alert_tunables_reach_the_rule() -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "alerts": {
                "policyReloadFailed": {"window": "30m", "for": "2m", "severity": "critical"},
                "tlsReloadFailed": {"window": "1h", "for": "1m", "severity": "info"},
                "podCacheNotSynced": {"for": "20m", "severity": "critical"},
                "podWatchFailing": {"for": "1m30s", "severity": "critical"},
                "podCacheStale": {"threshold": "5m", "for": "1m", "severity": "warning"},
                "namelessConnectionsAllowed": {"window": "6h", "threshold": 10, "for": "15m", "severity": "info"},
                "gatewayDown": {"for": "10m", "severity": "critical"},
            },
        },
        "serviceMonitor": {"enabled": True},
        "identity": {"kubernetes": {"enabled": True, "maxStaleness": "2m"}},
        "listeners": {"transparent": {"enabled": True}, "proxy-mtls": {"enabled": True}},
        "tls": {"existingSecret": "s"},
    }
    alerts = alert_rules(render(values))
    assert "[30m]" in alerts["EgressPolicyReloadFailed"]["expr"]
    assert "[1h]" in alerts["EgressTLSReloadFailed"]["expr"]
    assert alerts["EgressPodCacheStale"]["expr"].endswith(" > 300")  # the threshold wins over maxStaleness
    nameless = alerts["EgressNamelessConnectionsAllowed"]
    assert "[6h]" in nameless["expr"] and nameless["expr"].endswith(" > 10")
    assert "6h" in nameless["annotations"]["description"]
    for key, name in [
        ("policyReloadFailed", "EgressPolicyReloadFailed"), ("tlsReloadFailed", "EgressTLSReloadFailed"),
        ("podCacheNotSynced", "EgressPodCacheNotSynced"), ("podWatchFailing", "EgressPodWatchFailing"),
        ("podCacheStale", "EgressPodCacheStale"), ("namelessConnectionsAllowed", "EgressNamelessConnectionsAllowed"),
        ("gatewayDown", "EgressGatewayDown"),
    ]:
        given = values["prometheusRule"]["alerts"][key]
        assert alerts[name]["for"] == given["for"] and alerts[name]["labels"]["severity"] == given["severity"], name
    # Each one can be switched off.
    for key, name in [
        ("policyReloadFailed", "EgressPolicyReloadFailed"), ("podCacheStale", "EgressPodCacheStale"),
        ("gatewayDown", "EgressGatewayDown"),
    ]:
        off = copy.deepcopy(values)
        off["prometheusRule"]["alerts"][key]["enabled"] = False
        assert set(alert_rules(render(off))) == set(DEFAULT_ALERTS) - {name}


def test_alert_thresholds_are_plain_numbers() -> None:
    # Helm reads numbers as floats, which print as 1e+06; the rule has them in full.
    alerts = alert_rules(render(prometheus_rule_values(**{
        "identity.kubernetes.enabled": True, "identity.kubernetes.maxStaleness": "2000h",
        "listeners.sni.enabled": True, "prometheusRule.alerts.namelessConnectionsAllowed.threshold": 1000000,
    })))
    assert alerts["EgressPodCacheStale"]["expr"] == "egress_pod_cache_stale_seconds > 3600000"
    assert alerts["EgressNamelessConnectionsAllowed"]["expr"].endswith(") > 1000000")
    odd = render(prometheus_rule_values(**{"identity.kubernetes.enabled": True, "identity.kubernetes.maxStaleness": "3s"}))
    assert alert_rules(odd)["EgressPodCacheStale"]["expr"] == "egress_pod_cache_stale_seconds > 1.5"


def test_nameless_alert_ignores_listeners() -> None:
    values = prometheus_rule_values(**{
        "listeners.transparent.enabled": True,
        "listeners.smtp": {"kind": "transparent", "port": 15025, "silentClientTimeout": "200ms"},
        "listeners.sni.enabled": True,
        "prometheusRule.alerts.namelessConnectionsAllowed.ignoreListeners": ["smtp", "sni"],
    })
    expr = alert_rules(render(values))["EgressNamelessConnectionsAllowed"]["expr"]
    assert 'egress_nameless_connections_total{decision="allow",listener!~"smtp|sni"}' in expr
    # With every such listener ignored, the alert would watch nothing: it is left out.
    values["prometheusRule"]["alerts"]["namelessConnectionsAllowed"]["ignoreListeners"] = ["smtp", "sni", "transparent"]
    assert "EgressNamelessConnectionsAllowed" not in alert_rules(render(values))
    message = render_error(prometheus_rule_values(**{
        "prometheusRule.alerts.namelessConnectionsAllowed.ignoreListeners": ["smpt"],
    }))
    assert "ignoreListeners" in message and '"smpt"' in message


def test_additional_rules_are_appended_verbatim() -> None:
    own = load_values("prometheus-rule")["prometheusRule"]["additionalRules"]
    (group,) = render_set("prometheus-rule").one("PrometheusRule")["spec"]["groups"]
    assert group["rules"][-len(own):] == own
    assert group["rules"][: -len(own)] and all(r["alert"] in DEFAULT_ALERTS for r in group["rules"][: -len(own)])
    # Without default alerts the group holds only them, or nothing.
    all_off = {k: {"enabled": False} for k in (
        "policyReloadFailed", "tlsReloadFailed", "podCacheNotSynced", "podWatchFailing", "podCacheStale",
        "namelessConnectionsAllowed", "gatewayDown",
    )}
    only_own = render({"prometheusRule": {"enabled": True, "alerts": all_off, "additionalRules": own}})
    assert only_own.one("PrometheusRule")["spec"]["groups"][0]["rules"] == own
    empty = render({"prometheusRule": {"enabled": True, "alerts": all_off}})
    assert empty.one("PrometheusRule")["spec"]["groups"][0]["rules"] == []
    check_prometheus_rule(empty.one("PrometheusRule"))


def test_the_alerts_metrics_are_exported_and_documented() -> None:
    documented, registered = documented_metrics(), registered_metrics()
    # The parsers find what they should (so that the checks below cannot pass on an empty set).
    assert {"egress_connections_total", "egress_pod_cache_up", "egress_tls_reloads_total"} <= documented
    assert {"egress_connections_total", "egress_pod_cache_up", "egress_tls_reloads_total"} <= registered
    for metric in set(DEFAULT_ALERTS.values()) - {"up"}:
        assert metric in documented, f"{metric} is not in docs/configuration.md"
        assert metric in registered, f"{metric} is not registered in gateway/src/metrics.rs"
    assert "egress_no_such_metric_total" not in exported_metrics()


def test_deploy_md_shows_the_charts_expressions() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    alerts = alert_rules(render(prometheus_rule_values(**{"listeners.transparent.enabled": True})))
    for name in ("EgressPolicyReloadFailed", "EgressNamelessConnectionsAllowed"):
        assert f"`{alerts[name]['expr']}`" in text, name
    for key in ("prometheusRule.enabled", "prometheusRule.labels", "ignoreListeners", "additionalRules"):
        assert key in text, key


# NOTES ---------------------------------------------------------------------------------------


def test_notes_tell_how_to_use_the_gateway_and_what_to_allowlist() -> None:
    notes = render_set("default").notes
    assert "HTTPS_PROXY=http://egress-gateway.egress:3128" in notes
    assert "NO_PROXY=" in notes and ".svc" in notes
    assert "Allowlist" in notes
    dedicated = render_set("existing-policy").notes
    assert '{"node-role.example/egress":"true"}' in dedicated
    assert "ConfigMap egress-policy, key rules.yaml" in dedicated


# Values the schema and the templates refuse -------------------------------------------------


@pytest.mark.parametrize(
    "values, names",
    [
        ({"replicaCount": "2"}, ["/replicaCount", "integer"]),
        ({"replicaCount": 0}, ["/replicaCount", "minimum"]),
        ({"listeners": {"proxy": {"kind": "socks", "port": 3128}}}, ["/listeners/proxy/kind", "connect"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 70000}}}, ["/listeners/proxy/port", "65"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 0}}}, ["/listeners/proxy/port", "minimum"]),
        ({"admin": {"port": 65536}}, ["/admin/port"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 3128, "tls": {"clientAuth": "maybe"}}}},
         ["/listeners/proxy/tls/clientAuth"]),
        ({"listeners": {"sni": {"enabled": True, "tls": {}}}}, ["/listeners/sni/kind"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 3128, "tproxy": True}}}, ["/listeners/proxy/kind"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 3128, "deferAccept": "no"}}},
         ["/listeners/proxy/deferAccept", "boolean"]),
        ({"listeners": {"proxy": {"kind": "connect", "port": 3128, "prot": 1}}}, ["/listeners/proxy", "prot"]),
        ({"listeners": {"Proxy_1": {"kind": "connect", "port": 3130}}}, ["Proxy_1"]),
        ({"listeners": {"admin": {"kind": "connect", "port": 3130}}}, ["admin"]),
        ({"replicas": 3}, ["replicas"]),
        ({"config": {"upstream": {"connectTimout": "5s"}}}, ["/config/upstream", "connectTimout"]),
        ({"config": {"upstream": {"mark": 0}}}, ["/config/upstream/mark", "minimum"]),
        ({"config": {"upstream": {"mark": "0x2000"}}}, ["/config/upstream/mark", "integer"]),
        ({"config": {"upstream": {"mark": 4294967296}}}, ["/config/upstream/mark", "maximum"]),
        ({"config": {"upstream": {"mark": -1}}}, ["/config/upstream/mark"]),
        ({"config": {"shutdown": {"drainTimeout": "30"}}}, ["/config/shutdown/drainTimeout"]),
        ({"config": {"log": {"format": "xml"}}}, ["/config/log/format"]),
        ({"lockdown": {"namespaces": ["Payments"]}}, ["/lockdown/namespaces/0"]),
        ({"networkPolicy": {"listenerFrom": []}}, ["/networkPolicy/listenerFrom"]),
        ({"prometheusRule": {"enabled": "true"}}, ["/prometheusRule/enabled", "boolean"]),
        ({"prometheusRule": {"labels": {"release": 1}}}, ["/prometheusRule/labels/release", "string"]),
        ({"prometheusRule": {"namespace": "Monitoring"}}, ["/prometheusRule/namespace"]),
        ({"prometheusRule": {"selector": '{job="egress"}'}}, ["/prometheusRule/selector"]),
        ({"prometheusRule": {"alertLabels": {"team-name": "x"}}}, ["'team-name' does not match"]),
        ({"prometheusRule": {"alerts": {"policyReloadFailed": {"for": "5 minutes"}}}},
         ["/prometheusRule/alerts/policyReloadFailed/for"]),
        ({"prometheusRule": {"alerts": {"policyReloadFailed": {"window": "0m"}}}},
         ["/prometheusRule/alerts/policyReloadFailed/window"]),
        ({"prometheusRule": {"alerts": {"policyReloadFailed": {"window": "10 m"}}}},
         ["/prometheusRule/alerts/policyReloadFailed/window"]),
        ({"prometheusRule": {"alerts": {"namelessConnectionsAllowed": {"threshold": "0"}}}},
         ["/prometheusRule/alerts/namelessConnectionsAllowed/threshold", "integer"]),
        ({"prometheusRule": {"alerts": {"namelessConnectionsAllowed": {"threshold": -1}}}},
         ["/prometheusRule/alerts/namelessConnectionsAllowed/threshold", "minimum"]),
        ({"prometheusRule": {"alerts": {"namelessConnectionsAllowed": {"ignoreListeners": "smtp"}}}},
         ["/prometheusRule/alerts/namelessConnectionsAllowed/ignoreListeners", "array"]),
        ({"prometheusRule": {"alerts": {"podCacheStale": {"threshold": 60}}}},
         ["/prometheusRule/alerts/podCacheStale/threshold"]),
        ({"prometheusRule": {"alerts": {"gatewayDown": {"enabled": "no"}}}},
         ["/prometheusRule/alerts/gatewayDown/enabled", "boolean"]),
        ({"prometheusRule": {"alerts": {"gatewayDown": {"severity": ""}}}},
         ["/prometheusRule/alerts/gatewayDown/severity"]),
        ({"prometheusRule": {"alerts": {"targetDown": {"enabled": True}}}}, ["/prometheusRule/alerts", "targetDown"]),
        ({"prometheusRule": {"additionalRules": {"alert": "X", "expr": "up == 0"}}},
         ["/prometheusRule/additionalRules", "array"]),
        ({"prometheusRule": {"additionalRules": [{"alert": "X"}]}}, ["/prometheusRule/additionalRules/0", "expr"]),
        ({"prometheusRule": {"additionalRules": [{"alert": "X", "record": "x", "expr": "up"}]}},
         ["/prometheusRule/additionalRules/0"]),
        ({"prometheusRule": {"additionalRules": [{"alert": "X", "expr": "up", "for": 5}]}},
         ["/prometheusRule/additionalRules/0/for"]),
    ],
)
def test_bad_values_are_refused_by_the_schema(values: dict[str, Any], names: list[str]) -> None:
    message = render_error(values)
    for name in names:
        assert name in message, message
    # helm lint reports the same.
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"]


@pytest.mark.parametrize(
    "values, names",
    [
        ({"listeners": {"proxy": {"enabled": False}}}, ["at least one listener"]),
        ({"listeners": {"sni": {"enabled": True, "port": 3128}}}, ["listeners.sni.port", "3128"]),
        ({"listeners": {"sni": {"enabled": True, "port": 9901}}}, ["listeners.sni.port", "admin.port"]),
        ({"listeners": {"extra": {"kind": "connect", "port": 3999, "servicePort": 3128}}},
         ["listeners.proxy.servicePort", "3128"]),
        ({"listeners": {"proxy-mtls": {"enabled": True}}}, ["tls.existingSecret", "tls.certManager"]),
        ({"listeners": {"proxy-mtls": {"enabled": True}}, "tls": {"certManager": {"enabled": True}}},
         ["tls.certManager.issuerRef.name"]),
        ({"listeners": {"proxy-mtls": {"enabled": True}},
          "tls": {"existingSecret": "s", "clientCa": {"fromSecret": False}}}, ["tls.clientCa"]),
        ({"lockdown": {"namespaces": ["payments", NAMESPACE]}}, ["lockdown.namespaces", NAMESPACE]),
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}, ["autoscaling.minReplicas"]),
    ],
)
def test_inconsistent_values_are_refused_by_the_templates(values: dict[str, Any], names: list[str]) -> None:
    message = render_error(values)
    for name in names:
        assert name in message, message


def test_sysctls_widen_the_local_ports_and_stay_off_the_node() -> None:
    default = render_set("default").pod_spec["securityContext"]
    # Kubernetes' "safe" set (ip_local_reserved_ports since 1.27, the chart's oldest): allowed by
    # the baseline and restricted Pod Security levels. The widened range would cover the gateway's
    # own ports, so those are reserved: the proxy listener and the admin port.
    assert default["sysctls"] == [
        {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"},
        {"name": "net.ipv4.ip_local_reserved_ports", "value": "3128,9901"},
    ]
    every = render(
        {
            "listeners": {"proxy-mtls": {"enabled": True}, "transparent": {"enabled": True}, "sni": {"enabled": True}},
            "tls": {"existingSecret": "gw-tls"},
        }
    ).pod_spec["securityContext"]["sysctls"]
    reserved = next(s["value"] for s in every if s["name"] == "net.ipv4.ip_local_reserved_ports")
    assert sorted(int(p) for p in reserved.split(",")) == [3128, 3129, 8443, 9901, 15001]
    # A listener without `enabled` is enabled, and its port is reserved too.
    extra = render({"listeners": {"extra": {"kind": "connect", "port": 3999}}}).pod_spec["securityContext"]
    assert {"name": "net.ipv4.ip_local_reserved_ports", "value": "3128,3999,9901"} in extra["sysctls"]
    # A null value leaves a key out; none left, no sysctls at all (and nothing to reserve).
    none = render({"sysctls": {"net.ipv4.ip_local_port_range": None}}).pod_spec["securityContext"]
    assert "sysctls" not in none
    more = render({"sysctls": {"net.ipv4.tcp_tw_reuse": 1}}).pod_spec["securityContext"]
    assert more["sysctls"] == [
        {"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"},
        {"name": "net.ipv4.ip_local_reserved_ports", "value": "3128,9901"},
        {"name": "net.ipv4.tcp_tw_reuse", "value": "1"},
    ]
    # A reserved-ports key of one's own replaces the chart's (null: none at all).
    own = render({"sysctls": {"net.ipv4.ip_local_reserved_ports": "3000-3999"}}).pod_spec["securityContext"]
    assert {"name": "net.ipv4.ip_local_reserved_ports", "value": "3000-3999"} in own["sysctls"]
    off = render({"sysctls": {"net.ipv4.ip_local_reserved_ports": None}}).pod_spec["securityContext"]
    assert [s["name"] for s in off["sysctls"]] == ["net.ipv4.ip_local_port_range"]
    # Under hostNetwork the Pod has the node's network namespace: Kubernetes refuses namespaced
    # network sysctls there, and the node's settings are not the chart's to change.
    assert "sysctls" not in render_set("host-network").pod_spec["securityContext"]
    assert "'Not A Sysctl' does not match pattern" in render_error({"sysctls": {"Not A Sysctl": "1"}})


def test_max_staleness_reaches_gateway_yaml_only_when_set() -> None:
    kube = render_set("pod-identity-namespace").gateway_yaml["identity"]["kubernetes"]
    assert kube["maxStaleness"] == "2m"
    assert "maxStaleness" not in render_set("pod-identity").gateway_yaml["identity"]["kubernetes"]
    assert "does not match pattern" in render_error(
        {"identity": {"kubernetes": {"enabled": True, "maxStaleness": "two minutes"}}}
    )
