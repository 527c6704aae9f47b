"""deploy/ agrees with itself and with the code: the Dockerfile, the Kubernetes manifests,
the KEDA ScaledObject and the Grafana dashboard (no cluster needed: files are parsed)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from steadygen.config import Limits, Settings
from steadygen.worker import BASE_METRICS_PORT
from steadygen.worker import ROUTES as WORKER_ROUTES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
SETTING_NAMES = {f.name for f in dataclasses.fields(Settings)}
LIMIT_NAMES = {f.name for f in dataclasses.fields(Limits)}


def load_all() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


DOCS = load_all()


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: str) -> dict[str, Any]:
    [c] = find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment: its ConfigMaps (envFrom), then its own env entries."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        env.update(find("ConfigMap", src["configMapRef"]["name"])["data"])
    env.update({e["name"]: str(e["value"]) for e in c.get("env", [])})
    return env


def setting(env: dict[str, str], name: str) -> Any:
    """The value a process with this environment reads for a setting."""
    raw = env.get("STEADYGEN_" + name.upper())
    default = getattr(Settings(), name)
    if name == "metrics_port" and default is None:
        default = BASE_METRICS_PORT  # unset: 9400 + the GPU index, and a pod has cuda:0
    return type(default)(raw) if raw is not None and default is not None else raw or default


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    [p] = [p for p in c["ports"] if p["name"] == port]
    return int(p["containerPort"])


def test_every_manifest_parses_and_lives_in_one_namespace() -> None:
    kinds = {d["kind"] for d in DOCS}
    assert {"Namespace", "ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Deployment",
            "Service", "ScaledObject"} <= kinds
    namespaced = [d for d in DOCS if d["kind"] not in ("Namespace", "Kustomization")]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"steadygen"}
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / r).is_file() for r in listed)


@pytest.mark.parametrize("deployment", ["steadygen-api", "steadygen-worker"])
def test_env_vars_are_real_settings(deployment: str) -> None:
    env = env_of(container(deployment))
    for name in env:
        if name.startswith("STEADYGEN_LIMIT_"):
            assert name[len("STEADYGEN_LIMIT_"):].lower() in LIMIT_NAMES, name
        elif name.startswith("STEADYGEN_"):
            assert name[len("STEADYGEN_"):].lower() in SETTING_NAMES, name
    assert setting(env, "queue_url"), "both roles need STEADYGEN_QUEUE_URL"


def test_api_and_workers_agree_on_queue_model_and_data() -> None:
    api, worker = env_of(container("steadygen-api")), env_of(container("steadygen-worker"))
    for name in ("queue_url", "stream", "group", "model", "data_dir", "max_attempts",
                 "visibility_timeout_s"):
        assert setting(api, name) == setting(worker, name), name
    assert setting(api, "model"), "set the model explicitly: workers may be scaled to zero"


def test_queue_url_points_at_the_redis_service() -> None:
    url = urlsplit(setting(env_of(container("steadygen-worker")), "queue_url"))
    service = find("Service", "steadygen-redis")
    host = url.hostname or ""
    assert host.split(".")[0] == service["metadata"]["name"]
    if "." in host:
        assert host.split(".")[1] == service["metadata"]["namespace"]
    assert url.port == service["spec"]["ports"][0]["port"]
    [redis] = find("StatefulSet", "steadygen-redis")["spec"]["template"]["spec"]["containers"]
    assert port_number(redis, service["spec"]["ports"][0]["targetPort"]) == url.port


def test_redis_is_persistent_and_recent() -> None:
    conf = find("ConfigMap", "steadygen-redis")["data"]["redis.conf"]
    options = dict(line.split(None, 1) for line in conf.splitlines() if line.strip())
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] in ("always", "everysec")
    assert options["maxmemory-policy"] == "noeviction"
    sts = find("StatefulSet", "steadygen-redis")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    [redis] = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == options["dir"]
    major = int(re.search(r":(\d+)", redis["image"]).group(1))  # type: ignore[union-attr]
    assert major >= 7, "KEDA's lag trigger needs Redis 7"


def test_keda_scales_the_workers_on_our_stream_and_group() -> None:
    so = find("ScaledObject", "steadygen-worker")
    worker_env = env_of(container("steadygen-worker"))
    url = urlsplit(setting(worker_env, "queue_url"))
    assert so["spec"]["scaleTargetRef"]["name"] == "steadygen-worker"
    triggers = so["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    for t in triggers:
        meta = t["metadata"]
        assert meta["stream"] == setting(worker_env, "stream") == Settings().stream
        assert meta["consumerGroup"] == setting(worker_env, "group") == Settings().group
        assert meta["address"] == f"{url.hostname}:{url.port}"
        assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
    modes = {k for t in triggers for k in t["metadata"]
             if k in ("lagCount", "pendingEntriesCount", "streamLength")}
    assert "lagCount" in modes, "only the lag trigger can wake workers from zero"
    assert so["spec"].get("minReplicaCount", 1) >= 0


def test_ports_match_the_settings() -> None:
    api, worker = container("steadygen-api"), container("steadygen-worker")
    assert port_number(api, "http") == setting(env_of(api), "port")
    assert port_number(worker, "metrics") == setting(env_of(worker), "metrics_port")
    svc = find("Service", "steadygen-api")
    assert port_number(api, svc["spec"]["ports"][0]["targetPort"]) == setting(env_of(api), "port")
    assert setting(env_of(api), "host") == "0.0.0.0"
    for name, c in (("steadygen-api", api), ("steadygen-worker", worker)):
        notes = find("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert int(notes["prometheus.io/port"]) == port_number(c, c["ports"][0]["name"])


def api_answers(paths: set[str], tmp: Path) -> dict[str, int]:
    """Status codes of GET requests to the real FastAPI app over a real, empty queue."""
    from fastapi.testclient import TestClient

    from steadygen.queue.sqlite.queue import SQLiteQueue
    from steadygen.queue.sqlite.store import JobStore
    from steadygen.server.app import build_app
    from steadygen.server.metrics import Metrics
    from steadygen.server.service import Service

    settings = Settings()
    store = JobStore(tmp / "jobs.sqlite3")
    queue = SQLiteQueue(store, max_queue=1, max_attempts=1)
    service = Service(queue=queue, model_name="zimage-tiny", default_side=256,
                      limits=settings.limits, images_dir=tmp / "images", metrics=Metrics())
    try:
        with TestClient(build_app(settings, service)) as client:
            return {p: client.get(p).status_code for p in paths}
    finally:
        store.close()


def probes(c: dict[str, Any]) -> list[dict[str, Any]]:
    return [c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
            if k in c]


def test_probes_hit_routes_that_exist(tmp_path: Path) -> None:
    api, worker = container("steadygen-api"), container("steadygen-worker")
    assert {p["path"] for p in probes(api)} == {"/readyz", "/healthz"}
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    answers = api_answers({p["path"] for p in probes(api)} | {"/metrics", "/no-such-route"},
                          tmp_path)
    assert answers.pop("/no-such-route") == 404  # so a 404 would be noticed
    assert all(code != 404 for code in answers.values()), answers
    for p in probes(api):
        assert port_number(api, p["port"]) == setting(env_of(api), "port")
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for p in probes(worker):
        assert p["path"] in WORKER_ROUTES
        assert port_number(worker, p["port"]) == setting(env_of(worker), "metrics_port")


def test_workers_get_a_gpu_and_the_shared_volumes() -> None:
    worker = container("steadygen-worker")
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert worker["args"][0] == "worker" and container("steadygen-api")["args"][0] == "serve"
    assert "nvidia.com/gpu" not in container("steadygen-api")["resources"].get("limits", {})
    claims = {}
    for name in ("steadygen-api", "steadygen-worker"):
        spec = find("Deployment", name)["spec"]["template"]["spec"]
        vols = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        [c] = spec["containers"]
        claims[name] = {vols[m["name"]]: m["mountPath"] for m in c["volumeMounts"]}
        data_dir = setting(env_of(c), "data_dir")
        assert Path(claims[name]["steadygen-data"]) in Path(data_dir).parents
    assert claims["steadygen-api"]["steadygen-data"] == claims["steadygen-worker"]["steadygen-data"]
    data_claim = find("PersistentVolumeClaim", "steadygen-data")
    assert data_claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["steadygen-worker"]["steadygen-models"] == dockerfile_env()["XDG_CACHE_HOME"]
    grace = find("Deployment", "steadygen-worker")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > setting(env_of(worker), "shutdown_grace_s")


def dockerfile_env() -> dict[str, str]:
    """KEY=value pairs of the Dockerfile's ENV instructions (continued lines, comments)."""
    env: dict[str, str] = {}
    in_env = False
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("ENV "):
            in_env, stripped = True, stripped[4:]
        elif not in_env or stripped.startswith("#"):
            continue
        env.update(dict(re.findall(r"(\w+)=(\S+)", stripped.rstrip("\\"))))
        in_env = stripped.endswith("\\")
    return env


def test_dockerfile_builds_a_cuda_image_that_runs_as_a_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
    assert base and re.match(r"nvidia/cuda:12\.[\d.]+-.*runtime-ubuntu", base.group(1))
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M)
    assert "python3.11" in text and "download.pytorch.org/whl/cu" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    env = dockerfile_env()
    assert env["HF_HOME"].startswith(env["XDG_CACHE_HOME"])
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    assert exposed == {Settings().port, BASE_METRICS_PORT}
    assert {int(env["STEADYGEN_PORT"]), int(env["STEADYGEN_METRICS_PORT"])} == exposed
    for name in env:
        if name.startswith("STEADYGEN_"):
            assert name[len("STEADYGEN_"):].lower() in SETTING_NAMES, name
    assert re.search(r"^HEALTHCHECK .*\n?.*steadygen-healthcheck", text, re.M)
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()


def exported_metric_names() -> set[str]:
    """Every steadygen_ metric name the code can export (with histogram/counter series)."""
    from prometheus_client import CollectorRegistry

    from steadygen.queue.contract import QueueStats
    from steadygen.server.metrics import Metrics, QueueCollector, StateCollector

    def stats() -> QueueStats:
        return QueueStats(depth=1, running=1, workers=1, lag=1, pending=1, stream_length=1)

    metrics = Metrics(CollectorRegistry())
    metrics.registry.register(StateCollector(counts=lambda: {}, model_state=lambda: {}))
    metrics.registry.register(QueueCollector(stats))
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    # telemetry gauges are built per sample: read their names where they are made
    source = (Path(__file__).resolve().parents[2] / "steadygen/telemetry/sample.py").read_text()
    names |= {"steadygen_" + n for n in re.findall(r'"((?:gpu|host)_[a-z0-9_]+)"', source)}
    for res in ("cpu", "memory", "io"):  # made by an f-string there
        names |= {f"steadygen_host_pressure_{res}_some_ratio",
                  f"steadygen_host_pressure_{res}_some_seconds_total"}
    return names


def test_grafana_panels_use_metrics_the_code_exports() -> None:
    dash = json.loads((DEPLOY / "grafana" / "steadygen-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bsteadygen_[a-z0-9_]+", e)}
    known = exported_metric_names()
    assert used and not used - known, f"unknown metrics: {sorted(used - known)}"
    histograms = ("request_duration", "queue_wait", "service_duration", "phase_duration",
                  "step_duration")
    wanted = {f"steadygen_{h}_seconds_bucket" for h in histograms} | {
        "steadygen_queue_depth", "steadygen_jobs", "steadygen_slowdown_seconds_total",
        "steadygen_queue_lag", "steadygen_gpu_sm_clock_hertz", "steadygen_gpu_power_watts",
        "steadygen_gpu_temperature_celsius", "steadygen_gpu_memory_used_bytes"}
    assert wanted <= used, sorted(wanted - used)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"]
