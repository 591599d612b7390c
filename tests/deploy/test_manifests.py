"""The Kubernetes manifests (``deploy/kubernetes``), validated offline.

The example overlay is rendered as ``kubectl apply -k`` would render it, for the
kustomize features it uses (resources, namespace, images, replicas, labels,
secret and config map generators), and every object is validated against the
OpenAPI schemas of a pinned Kubernetes version with ``kubernetes-validate``'s
strict mode (unknown fields refused). Then the rules a platform engineer relies
on: every Deployment has probes, resource requests and a non-root security
context; the services are probed with ``grpc:`` on the standard health service;
each service has its migrate Job; the secrets are exactly the secret settings.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy import certs
from deploy.local.__main__ import SERVICES
from services.chassis.config import OPTIONAL_SECRETS, Settings, secret_settings, setting_name
from tests.conftest import REPO_ROOT

#: The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.33.0"
MANIFESTS = REPO_ROOT / "deploy/kubernetes"
#: Settings of the mail listeners that DESIGN §7.1 names and another branch adds.
PENDING_SETTINGS = {
    "MAILPLANE_SUBMISSION_ADDR",
    "MAILPLANE_SUBMISSIONS_ADDR",
    "MAILPLANE_IMAP_ADDR",
}
CLUSTER_SCOPED = {"Namespace"}


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in ``folder``, for the features ours use."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [o for o in yaml.safe_load_all(path.read_text()) if o]
    for label in kustomization.get("labels", []):
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    for generator in kustomization.get("secretGenerator", []):
        data = {}
        for env in generator.get("envs", []):
            data.update(_env_file(folder / env))
        for file in generator.get("files", []):
            data[Path(file).name] = (folder / file).read_text()
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "type": generator.get("type", "Opaque"),
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            }
        )
    for generator in kustomization.get("configMapGenerator", []):
        literals = dict(item.split("=", 1) for item in generator.get("literals", []))
        (target,) = [
            o
            for o in objects
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == generator["name"]
        ]
        assert generator.get("behavior") == "merge"
        target["data"].update(literals)
    for image in kustomization.get("images", []):
        for o in objects:
            for container in _containers(o):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    for replicas in kustomization.get("replicas", []):
        for o in objects:
            if o["kind"] == "Deployment" and o["metadata"]["name"] == replicas["name"]:
                o["spec"]["replicas"] = replicas["count"]
    if "namespace" in kustomization:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _containers(o: dict[str, Any]) -> list[dict[str, Any]]:
    if o["kind"] in ("Deployment", "Job"):
        return list(o["spec"]["template"]["spec"]["containers"])
    return []


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The example overlay, rendered with its example secrets and fresh certificates."""
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(MANIFESTS, tree)
    overlay = tree / "overlays/example"
    shutil.copy(overlay / "secrets.env.example", overlay / "secrets.env")
    certs.write(overlay / "tls")
    return render(overlay)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_every_object_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    assert len(rendered) > 20
    for o in rendered:
        # Raises ValidationError naming the field (an unknown one, in strict mode).
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


def test_the_base_files_validate_strictly_as_written() -> None:
    for path in sorted((MANIFESTS / "base").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for o in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


def test_a_mistake_is_caught() -> None:
    deployment = next(
        o
        for o in yaml.safe_load_all((MANIFESTS / "base/services.yaml").read_text())
        if o["kind"] == "Deployment"
    )
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_deployment_has_probes_requests_and_runs_as_non_root(
    rendered: list[dict[str, Any]],
) -> None:
    deployments = of_kind(rendered, "Deployment")
    assert set(deployments) >= {name for name, _, _ in SERVICES} | {
        "gateway",
        "smtp",
        "imap",
        "worker",
    }
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in pod["containers"]:
            assert container["readinessProbe"] and container["livenessProbe"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_services_are_probed_over_grpc_health_on_the_plaintext_health_port(
    rendered: list[dict[str, Any]],
) -> None:
    (config,) = of_kind(rendered, "ConfigMap").values()
    health_port = int(config["data"]["MAILPLANE_GRPC_HEALTH_PORT"])
    deployments = of_kind(rendered, "Deployment")
    for name, _, _ in SERVICES:
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [f"services.{name}", "serve"]
        assert container["readinessProbe"]["grpc"] == {"port": health_port}
        assert container["livenessProbe"]["grpc"] == {
            "port": health_port,
            "service": "mailplane.Liveness",
        }


def test_each_service_has_a_migrate_job_and_a_disruption_budget(
    rendered: list[dict[str, Any]],
) -> None:
    jobs = of_kind(rendered, "Job")
    budgets = of_kind(rendered, "PodDisruptionBudget")
    deployments = of_kind(rendered, "Deployment")
    for name, _, _ in SERVICES:
        (container,) = jobs[f"migrate-{name}"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [f"services.{name}", "migrate"]
    for name in ("gateway", "smtp", "imap", *(n for n, _, _ in SERVICES)):
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector == deployments[name]["spec"]["selector"]["matchLabels"]


def test_mail_listeners_are_load_balancers_and_the_gateway_an_ingress(
    rendered: list[dict[str, Any]],
) -> None:
    services = of_kind(rendered, "Service")
    assert services["smtp"]["spec"]["type"] == "LoadBalancer"
    assert {p["port"] for p in services["smtp"]["spec"]["ports"]} == {25, 587, 465}
    assert services["imap"]["spec"]["type"] == "LoadBalancer"
    assert {p["port"] for p in services["imap"]["spec"]["ports"]} == {993}
    (ingress,) = of_kind(rendered, "Ingress").values()
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "gateway" and "gateway" in services


def test_the_settings_are_real_and_the_secrets_are_exactly_the_secret_settings(
    rendered: list[dict[str, Any]],
) -> None:
    (config,) = of_kind(rendered, "ConfigMap").values()
    fields = {setting_name(name) for name in Settings.model_fields}
    assert set(config["data"]) - fields <= PENDING_SETTINGS
    secrets = of_kind(rendered, "Secret")
    secret_keys = set(secrets["mailplane-secrets"]["data"])
    assert secret_keys == {
        setting_name(name) for name in secret_settings() if name not in OPTIONAL_SECRETS
    }
    assert set(secrets["mailplane-grpc-tls"]["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert not set(config["data"]) & secret_keys  # no secret in the ConfigMap
    # The production settings as the pods get them are accepted (TLS off loopback).
    values = {
        **config["data"],
        **{
            k: base64.b64decode(v).decode() for k, v in secrets["mailplane-secrets"]["data"].items()
        },
    }
    known = {
        name: values[setting_name(name)]
        for name in Settings.model_fields
        if setting_name(name) in values
    }
    settings = Settings(**known)
    assert settings.env == "production" and settings.grpc_tls_client_auth
