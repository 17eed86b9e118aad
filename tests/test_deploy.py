"""The deployment files: the Kubernetes manifests (deploy/kubernetes/) against the API's own
schemas (kubernetes-validate, offline, strict: an unknown field is an error), and the promises
their comments make — every role from the one image, secrets only as files or references,
probes on the liveness port, budgets that match their pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUBE = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are checked against, and the newest the validator knows.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]


def _manifests() -> list[str]:
    return sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", _manifests())
def test_every_manifest_is_valid_kubernetes(name: str, version: str) -> None:
    for document in _documents(name):
        kubernetes_validate.validate(document, version, strict=True)


def _kinds() -> dict[tuple[str, str], dict[str, Any]]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    found = {}
    for name in kustomization["resources"]:
        for document in _documents(name):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def test_the_kustomization_applies_everything_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [n for n in _manifests() if n != "secret.example.yaml"]


def test_every_role_runs_the_one_image_and_reads_secrets_only_as_files_or_references() -> None:
    kinds = _kinds()
    env = kinds[("ConfigMap", "balancer-env")]["data"]
    example = _documents("secret.example.yaml")[0]["stringData"]
    mounted = "/var/run/secrets/balancer/"
    for name, value in env.items():
        # No secret in the ConfigMap: each arrives as a file of the Secret, named by <NAME>_FILE.
        assert not any(word in name for word in ("SECRET_KEY", "PASSWORD", "TOKEN")) or name.endswith("_FILE")
        if name.endswith("_FILE"):
            assert value.startswith(mounted) and value.removeprefix(mounted) in example, name
    assert "*" not in env["FORWARDED_ALLOW_IPS"]
    pods = [d for (kind, _), d in kinds.items() if kind in ("Deployment", "Job")]
    assert {d["metadata"]["name"] for d in pods} == {
        "balancer-web",
        "balancer-worker",
        "balancer-beat",
        "balancer-flower",
        "balancer-migrate",
    }
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["image"] == "llm-balancer"
            assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
            assert {"configMapRef": {"name": "balancer-env"}} in container["envFrom"]
            for variable in container.get("env", []):
                assert "value" not in variable, "a secret's value written in a manifest"
        secrets = [v for v in spec["volumes"] if "secret" in v]
        assert secrets == [{"name": "secrets", "secret": {"secretName": "balancer-secrets"}}]


def test_web_probes_and_the_disruption_budgets_match_their_pods() -> None:
    kinds = _kinds()
    web = kinds[("Deployment", "balancer-web")]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in web["ports"]}
    assert ports == {"http": 8080, "health": 8081}  # deploy/Dockerfile's EXPOSE
    assert web["livenessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
    for (kind, name), budget in kinds.items():
        if kind != "PodDisruptionBudget":
            continue
        target = kinds[("Deployment", name)]
        assert budget["spec"]["selector"] == target["spec"]["selector"]
        assert budget["spec"]["minAvailable"] < target["spec"]["replicas"]
    assert kinds[("Deployment", "balancer-beat")]["spec"]["replicas"] >= 2  # beat may die
