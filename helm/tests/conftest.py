"""Shared helpers of the chart tests.

The chart is rendered by the real Helm engine (helm-python-sdk: Helm's Go SDK behind a C library),
the objects are checked against the Kubernetes OpenAPI schemas (kubernetes-validate), and the
rendered gateway.yaml and policy.yaml are given to the real gateway binary. Nothing here needs a
cluster or the network.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

TESTS = Path(__file__).resolve().parent
CHART = TESTS.parent / "egress-gateway"
REPO = TESTS.parent.parent
VALUES_DIR = TESTS / "values"

RELEASE = "egress-gateway"
NAMESPACE = "egress"

# Every value set in helm/tests/values, by file name without .yaml.
VALUE_SETS = sorted(p.stem for p in VALUES_DIR.glob("*.yaml"))


def _oldest_supported() -> str:
    """The lower bound of Chart.yaml's kubeVersion (">=1.27.0-0" gives "1.27.0")."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:-0)?", constraint.strip())
    assert match, f"Chart.yaml kubeVersion {constraint!r} is not of the form '>=X.Y.Z-0'"
    return f"{match.group(1)}.{match.group(2)}.{match.group(3) or 0}"


OLDEST_KUBE = _oldest_supported()
CURRENT_KUBE = kubernetes_validate.latest_version()
KUBE_VERSIONS = [OLDEST_KUBE, CURRENT_KUBE]


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


def render_files(values: dict[str, Any], kube_version: str = CURRENT_KUBE) -> dict[str, str]:
    """Render the chart offline, as `helm template` would for an install.

    helm-python-sdk's Chart.render() does not pass a Kubernetes version through, but the C
    library's render call accepts one (it sets .Capabilities.KubeVersion, which the chart reads),
    so the call is made here with the same options plus kube_version. `strict` makes a reference
    to a missing value a template error.
    """
    opts = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        "strict": True,
        "kube_version": f"v{kube_version}",
    }
    with helm.Chart.load(CHART) as chart:
        rendered = _native.call_string(
            "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)
        )
    return json.loads(rendered)


class Rendered:
    """The objects and NOTES of one rendering."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.notes = next((v for k, v in files.items() if k.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(files.items()):
            if not path.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    self.objects.append(doc)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    def configmap_data(self, name: str) -> dict[str, str] | None:
        found = [o for o in self.all("ConfigMap") if o["metadata"]["name"] == name]
        return found[0]["data"] if found else None

    @property
    def gateway_yaml_text(self) -> str:
        return self.one("ConfigMap", f"{RELEASE}-config")["data"]["gateway.yaml"]

    @property
    def gateway_yaml(self) -> dict[str, Any]:
        return yaml.safe_load(self.gateway_yaml_text)

    @property
    def policy_text(self) -> str | None:
        data = self.configmap_data(f"{RELEASE}-policy")
        return None if data is None else data["policy.yaml"]


@functools.lru_cache(maxsize=None)
def _render_set_cached(name: str, kube_version: str) -> Rendered:
    return Rendered(render_files(load_values(name), kube_version))


def render_set(name: str, kube_version: str = CURRENT_KUBE) -> Rendered:
    return _render_set_cached(name, kube_version)


def render(values: dict[str, Any], kube_version: str = CURRENT_KUBE) -> Rendered:
    return Rendered(render_files(values, kube_version))


def render_error(values: dict[str, Any]) -> str:
    """The message with which Helm refuses these values (schema or template check)."""
    with pytest.raises(helm.HelmError) as refused:
        render_files(values)
    return str(refused.value)


# The gateway binary -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    configured = os.environ.get("EGRESS_GATEWAY_BIN", "target/debug/egress-gateway")
    path = Path(configured)
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no gateway binary at {path}: build it (cargo build -p egress-gateway) or set "
            "EGRESS_GATEWAY_BIN",
            pytrace=False,
        )
    return path


def run_gateway(binary: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    # Only the overrides a test passes: none inherited from the environment of the test run.
    base = {k: v for k, v in os.environ.items() if not k.startswith("EGRESS_GATEWAY__")}
    base.update(env or {})
    return subprocess.run(
        [str(binary), *args], env=base, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="session")
def dev_pki(gateway_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A development CA and gateway certificate from `egress-gateway certs dev`, as the files a
    cert-manager Secret holds (tls.crt, tls.key, ca.crt)."""
    out = tmp_path_factory.mktemp("pki")
    result = run_gateway(gateway_bin, "certs", "dev", "--out", str(out / "pki"))
    assert result.returncode == 0, result.stderr
    pki = out / "pki"
    return {
        "tls.crt": (pki / "gateway.crt").read_text(),
        "tls.key": (pki / "gateway.key").read_text(),
        "ca.crt": (pki / "ca.crt").read_text(),
    }
