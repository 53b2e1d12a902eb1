"""k8s/ renders, and every object is one a cluster of the stated version would accept: built-in kinds by
Kubernetes' own schemas (kubernetes-validate, strict), Strimzi and prometheus-operator kinds by their CRDs'
openAPIV3Schema; checkov finds nothing that docs/deployment.md does not justify."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.manifests import CHECKOV, KUBERNETES_VERSION, OVERLAYS, crd_schemas


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return crd_schemas()


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as kubectl's default (strict) field validation refuses them,
    wherever the CRD does not preserve unknown fields itself."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_errors(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    schema = strict(schemas[(obj["apiVersion"], obj["kind"])])
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_each_overlay_renders_the_whole_system(overlay_objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in overlay_objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceAccount", "ConfigMap", "Secret", "Kafka", "KafkaNodePool", "KafkaTopic", "ServiceMonitor",
            "PrometheusRule", "AlertmanagerConfig"} <= kinds
    assert all(o["metadata"].get("namespace") == "tuneloop" for o in overlay_objects if o["kind"] != "Namespace")


def test_built_in_objects_are_valid_kubernetes(overlay_objects: list[dict[str, Any]],
                                               schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    checked = 0
    for obj in overlay_objects:
        if (obj["apiVersion"], obj["kind"]) in schemas:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at "
                        f"{'.'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 15


def test_custom_objects_match_their_crds(overlay_objects: list[dict[str, Any]],
                                         schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    custom = [o for o in overlay_objects if (o["apiVersion"], o["kind"]) in schemas]
    assert {o["kind"] for o in custom} == {"Kafka", "KafkaNodePool", "KafkaTopic", "ServiceMonitor",
                                           "PrometheusRule", "AlertmanagerConfig"}
    problems = {f"{o['kind']}/{o['metadata']['name']}": crd_errors(o, schemas) for o in custom}
    assert not {name: errors for name, errors in problems.items() if errors}


def test_the_crd_check_refuses_what_a_cluster_would(rendered: dict[str, list[dict[str, Any]]],
                                                    schemas: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The validation above can fail: a misspelt field and a wrong type are caught."""
    kafka = next(o for o in rendered["cpu"] if o["kind"] == "Kafka")
    misspelt = yaml.safe_load(yaml.safe_dump(kafka))
    misspelt["spec"]["kafka"]["listener"] = misspelt["spec"]["kafka"].pop("listeners")
    assert any("listeners" in e for e in crd_errors(misspelt, schemas))
    topic = next(o for o in rendered["cpu"] if o["kind"] == "KafkaTopic")
    wrong = yaml.safe_load(yaml.safe_dump(topic))
    wrong["spec"]["partitions"] = "twelve"
    assert crd_errors(wrong, schemas)


def documented_checkov_skips() -> set[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## Security checks", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"CKV2?_K8S_\d+", section))


def test_checkov_passes_the_rendered_manifests(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make setup` builds checkov's virtualenv"
    for overlay in OVERLAYS:
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(rendered[overlay], sort_keys=False))
    done = subprocess.run([str(CHECKOV), "--directory", str(tmp_path), "--framework", "kubernetes", "--compact",
                           "--skip-download", "--output", "json"],
                          capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert not failed
    assert report["summary"]["passed"] > 300  # it did scan every workload
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped <= documented_checkov_skips(), "a checkov skip docs/deployment.md does not justify"
