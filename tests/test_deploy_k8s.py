"""deploy/k8s/: every manifest against the Kubernetes schemas (strict: unknown fields fail), and the
wiring between them (probes, GPU, shutdown, names, selectors, the autoscaling metric)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# Oldest release still widely run that has every API used here (autoscaling/v2, policy/v1).
KUBERNETES_VERSION = "1.30.0"
APP_LABELS = {"app.kubernetes.io/name": "ecad-server"}


def manifests() -> list[dict[str, Any]]:
    docs = [doc for path in sorted(K8S.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return [doc for doc in docs if doc]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    return found


def container() -> dict[str, Any]:
    (only,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("doc", manifests(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_manifest_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(one("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_kind_is_there() -> None:
    kinds = {doc["kind"] for doc in manifests()}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= kinds


def test_deployment_probes_gpu_and_shutdown(tmp_path: Path) -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    main = container()
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert main["lifecycle"]["preStop"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert one("Deployment")["spec"]["selector"]["matchLabels"] == APP_LABELS
    # Long enough for a request admitted just before SIGTERM to run to its deadline.
    assert pod.get("terminationGracePeriodSeconds", 30) > config_in_configmap(tmp_path).server.deadline_s


def config_in_configmap(folder: Path) -> Any:
    path = folder / "config.yaml"
    # The ConfigMap that the Deployment mounts (the adapter's rules are another one).
    volumes = one("Deployment")["spec"]["template"]["spec"]["volumes"]
    (name,) = [volume["configMap"]["name"] for volume in volumes if "configMap" in volume]
    path.write_text(one("ConfigMap", name)["data"]["config.yaml"])
    return load_config(path)


def test_configmap_holds_a_config_the_server_accepts(tmp_path: Path) -> None:
    config = config_in_configmap(tmp_path)
    # The Deployment mounts it at /srv/ecad/config.yaml, where relative registries are the image's.
    (mount,) = [m for m in container()["volumeMounts"] if m["mountPath"] == "/srv/ecad/config.yaml"]
    assert mount["subPath"] == "config.yaml"
    for model in config.models:
        assert model.schedules is not None
        assert (ROOT / model.schedules.relative_to(tmp_path) / "front.json").is_file()
    assert config.server.auth.api_keys_env == "ECAD_API_KEYS"


def test_api_keys_come_from_the_secret() -> None:
    secret = one("Secret")
    assert "ECAD_API_KEYS" in secret["stringData"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container()["envFrom"]


def test_service_and_pdb_select_the_pods() -> None:
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_hpa_scales_the_deployment_on_queue_depth_from_the_adapter() -> None:
    hpa = one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one("Deployment")["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "ecad_queue_depth"
    (adapter,) = [
        doc for doc in manifests() if doc["kind"] == "ConfigMap" and "adapter" in doc["metadata"]["name"]
    ]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert any(
        re.match(r"ecad_queue_depth\{", rule["seriesQuery"]) and rule["name"]["as"] == "ecad_queue_depth"
        for rule in rules
    )
    documented = (ROOT / "docs" / "metrics.md").read_text()
    assert "| `ecad_queue_depth` | gauge |" in documented
