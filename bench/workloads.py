"""Synthetic workloads: a catalogue of realistic application profiles, drawn at random.

One draw (`WorkloadDraw`) is a Kubernetes workload object (Deployment, StatefulSet, DaemonSet,
Job, CronJob or bare Pod) with its profile. The object becomes an InferenceRequest through
`webhook.model.extract.to_inference_request`, the path the webhook and `train collect` use, so the
benchmarks see exactly what serving sees. The true power of its pods comes from
`bench.power_model`, which reads the profile's utilisations: the model can only infer those
from the words in images, commands and app labels.

Sizes are the round numbers teams pick (100m, 250m, 1 core, 512Mi), scaled by a jitter so that
specs spread out the way a large cluster's do and large training sets are not mostly exact
duplicates (those would collapse AnchoredKNN's trust radius to 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import power_model
from webhook.model.extract import to_inference_request
from webhook.model.gpus import gpu_product
from webhook.model.kinds import KINDS_BY_NAME
from webhook.model.schema import InferenceRequest

TEAMS = (
    "shop", "payments", "search", "platform", "data", "ml", "identity", "media", "logistics", "growth",
    "finance", "support", "ads", "risk", "infra", "mobile", "partners", "catalog", "analytics", "security",
)
DOMAINS = (
    "checkout", "cart", "orders", "inventory", "pricing", "catalog", "reviews", "recommendations", "search",
    "users", "auth", "session", "profile", "billing", "invoices", "ledger", "tax", "fraud", "shipping", "tracking",
    "notifications", "email", "sms", "media", "thumbnails", "video", "feed", "chat", "geo", "quotes", "loyalty",
    "coupons", "analytics", "reporting", "audit", "gateway", "webhooks", "exports", "imports", "scheduler",
)
CPU_JITTER = (0.8, 1.0, 1.0, 1.2, 1.5)
MEMORY_JITTER = (0.75, 1.0, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class Profile:
    """A kind of application, with the truth's utilisations (see bench.power_model)."""

    key: str
    share: float  # of all workloads
    kinds: tuple[str, ...]  # drawn uniformly
    images: tuple[str, ...]  # "{team}" and "{service}" are filled in
    commands: tuple[tuple[str, ...], ...]  # () = the image's entrypoint
    suffixes: tuple[str, ...]  # appended to the domain word to name the service
    cpu_request_millicores: tuple[int, ...]
    memory_request_mib: tuple[int, ...]
    cpu_utilisation: float
    volumes: tuple[str, ...]
    gpus: tuple[int, ...] = (0,)
    gpu_utilisation: float = 0.0
    diurnal: bool = True  # traffic-driven, with a daily swing
    runtime_class: str | None = None
    priority_class: str | None = None
    instance_types: tuple[str, ...] = ()
    # Busy cores of a long-running service whatever it requests (None: batch work, by its request).
    idle_busy_cores: float | None = None
    at_limit: bool = False  # an agent that runs at its CPU limit
    # Batch work: the argument that states how much (appended to the command as "--flag N" or
    # "NAME=N"), its choices, and the minutes one unit takes at 1 core (bench.cluster_sim).
    work_argument: str | None = None
    work_units: tuple[int, ...] = ()
    minutes_per_work_unit: float = 0.0
    # What the app's container takes from the node, as the public charts of its images set it
    # (cilium: hostNetwork, privileged or NET_ADMIN/SYS_ADMIN; falco: privileged; node-exporter:
    # hostNetwork and hostPID), per profile rather than per image.
    host_namespaces: tuple[str, ...] = ()  # "hostNetwork", "hostPID", "hostIPC"
    privileged: bool = False
    capabilities: tuple[str, ...] = ()


PROFILES: tuple[Profile, ...] = (
    Profile("web-frontend", 0.16, ("Deployment",), ("nginx:1.27", "registry.example.com/{team}/{service}-web:2.4.1"),
            ((), ("nginx", "-g", "daemon off;")), ("web", "frontend", "ui"), (50, 100, 250, 500), (64, 128, 256, 512),
            0.15, ("configMap", "emptyDir"), idle_busy_cores=0.003),
    Profile("python-api", 0.16, ("Deployment",), ("registry.example.com/{team}/{service}:1.18.0",),
            (("gunicorn", "app.wsgi", "--workers", "4"), ("uvicorn", "main:app", "--port", "8080")),
            ("api", "service", "backend"), (100, 250, 500, 1000), (256, 512, 1024), 0.30, ("configMap", "secret"), idle_busy_cores=0.01),
    Profile("java-service", 0.12, ("Deployment",), ("registry.example.com/{team}/{service}-svc:3.2.0",),
            (("java", "-XX:MaxRAMPercentage=75", "-jar", "/app/service.jar"),), ("svc", "core", "engine"),
            (500, 1000, 2000), (1024, 2048, 4096), 0.35, ("configMap", "secret", "emptyDir"), idle_busy_cores=0.02),
    Profile("cache", 0.05, ("Deployment", "StatefulSet"), ("redis:7.2", "memcached:1.6"), ((),), ("cache",),
            (100, 250, 500), (512, 1024, 4096), 0.10, ("emptyDir",), diurnal=True, idle_busy_cores=0.005),
    Profile("database", 0.06, ("StatefulSet",), ("postgres:16.3", "mysql:8.4", "mongo:7.0"), ((),), ("db",),
            (500, 1000, 2000, 4000), (2048, 4096, 8192, 16384), 0.40, ("persistentVolumeClaim", "secret", "configMap"),
            priority_class="high", idle_busy_cores=0.02),
    Profile("queue", 0.04, ("StatefulSet",), ("apache/kafka:3.7.0", "rabbitmq:3.13"), ((),), ("events", "queue"),
            (1000, 2000), (4096, 8192), 0.30, ("persistentVolumeClaim", "configMap"), idle_busy_cores=0.03),
    Profile("batch-etl", 0.10, ("CronJob", "Job"), ("registry.example.com/{team}/{service}-etl:0.9.3", "apache/spark:3.5.1"),
            (("python", "-m", "etl.run", "--full"), ("spark-submit", "--master", "local[*]", "/jobs/aggregate.py")),
            ("etl", "export", "rollup"), (500, 1000, 2000, 4000), (1024, 2048, 4096), 0.85, ("secret", "emptyDir"),
            diurnal=False, work_argument="--partitions", work_units=(2, 4, 8, 16, 32), minutes_per_work_unit=1.5),
    Profile("ml-training", 0.03, ("Job",), ("nvcr.io/nvidia/pytorch:24.05-py3",),
            (("torchrun", "--nproc_per_node", "auto", "train.py"),), ("train", "finetune"), (4000, 8000, 16000),
            (16384, 32768, 65536), 0.50, ("persistentVolumeClaim", "emptyDir"), gpus=(1, 2, 4, 8), gpu_utilisation=0.85,
            diurnal=False, runtime_class="nvidia", instance_types=("p4d.24xlarge", "g5.12xlarge"),
            work_argument="--epochs", work_units=(1, 2, 3, 5, 8), minutes_per_work_unit=90.0),
    Profile("ml-inference", 0.04, ("Deployment",), ("nvcr.io/nvidia/tritonserver:24.05-py3",),
            (("tritonserver", "--model-repository", "/models"),), ("inference", "embeddings"), (1000, 2000, 4000),
            (4096, 8192, 16384), 0.25, ("persistentVolumeClaim", "configMap"), gpus=(1,), gpu_utilisation=0.35,
            runtime_class="nvidia", instance_types=("g5.xlarge", "g5.2xlarge"), idle_busy_cores=0.05),
    Profile("log-agent", 0.05, ("DaemonSet",), ("fluent/fluent-bit:3.1", "grafana/promtail:3.0.0"), ((),), ("logs",),
            (50, 100, 200), (64, 128, 256), 0.25, ("hostPath", "configMap"), priority_class="system-node-critical", idle_busy_cores=0.01),
    Profile("node-monitor", 0.05, ("DaemonSet",), ("prom/node-exporter:v1.8.1", "quay.io/sustainable_computing_io/kepler:0.7.11"),
            ((),), ("exporter", "monitor"), (50, 100), (32, 64, 128), 0.10, ("hostPath",),
            priority_class="system-node-critical", idle_busy_cores=0.005, host_namespaces=("hostNetwork", "hostPID")),
    Profile("ci-runner", 0.08, ("Pod", "Job"), ("gitlab/gitlab-runner:v17.0.0", "registry.example.com/{team}/builder:5"),
            (("make", "test"), ("bazel", "build", "//...")), ("ci", "build"), (1000, 2000, 4000), (2048, 4096, 8192), 0.70,
            ("emptyDir", "secret"), diurnal=False, work_argument="TEST_SHARDS", work_units=(1, 2, 4, 8),
            minutes_per_work_unit=5.0),
    Profile("node-agent", 0.03, ("DaemonSet",), ("cilium/cilium:v1.15.6", "falcosecurity/falco:0.38.1"), ((),),
            ("cni", "scanner"), (100, 250), (256, 512), 0.9, ("hostPath", "configMap"),
            priority_class="system-node-critical", at_limit=True, host_namespaces=("hostNetwork",), privileged=True,
            capabilities=("NET_ADMIN", "SYS_ADMIN")),
    Profile("debug", 0.06, ("Pod",), ("busybox:1.36", "nicolaka/netshoot:v0.13"), (("sleep", "infinity"),), ("debug", "shell"),
            (10, 50, 100), (16, 32, 64), 0.02, (), diurnal=False, idle_busy_cores=0.0005),
)
_PROFILE_SHARES = np.array([p.share for p in PROFILES]) / sum(p.share for p in PROFILES)


@dataclass(frozen=True)
class WorkloadDraw:
    """One synthetic workload: its object, its profile, and its pods' true power."""

    manifest: dict[str, Any]
    profile: Profile
    request: InferenceRequest
    spec_power_watts: float  # the truth for this spec, workload_factor 1
    workload_factor: float  # this workload's own traffic level (unknowable from the spec)
    pods: int
    work_units: int | None = None  # batch work its arguments state (bench.cluster_sim times it)

    @property
    def mean_power_watts(self) -> float:
        """The long-run average power of one of its pods: what its measurements converge to."""
        return self.spec_power_watts * self.workload_factor


def _pick(rng: np.random.Generator, options: tuple[Any, ...]) -> Any:
    return options[int(rng.integers(len(options)))]


def _quantity_cpu(millicores: int) -> str:
    return f"{millicores // 1000}" if millicores % 1000 == 0 else f"{millicores}m"


def _quantity_memory(mib: int) -> str:
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _volume(source: str, index: int, service: str) -> dict[str, Any]:
    name = f"{source.lower()}-{index}"
    body: dict[str, Any] = {
        "configMap": {"name": f"{service}-config"},
        "secret": {"secretName": f"{service}-credentials"},
        "emptyDir": {},
        "persistentVolumeClaim": {"claimName": f"data-{service}"},
        "hostPath": {"path": "/var/log", "type": "Directory"},
    }[source]
    return {"name": name, source: body}


def _container(name: str, image: str, command: tuple[str, ...], cpu_millicores: int, memory_mib: int,
               cpu_limit: bool, gpus: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": _quantity_cpu(cpu_millicores), "memory": _quantity_memory(memory_mib)},
                                 "limits": {"memory": _quantity_memory(memory_mib * 2)}}
    if cpu_limit:
        resources["limits"]["cpu"] = _quantity_cpu(cpu_millicores * 2)
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {"name": name, "image": image, "resources": resources}
    if command:
        container["command"] = list(command)
    return container


def _pod_spec(profile: Profile, rng: np.random.Generator, team: str, service: str,
              kind: str) -> tuple[dict[str, Any], list[power_model.ContainerLoad], int, int | None]:
    """The pod template's spec for a workload of `kind`, the truth's view of its containers, its
    memory request, and its units of batch work (None for a service)."""
    image = _pick(rng, profile.images).format(team=team, service=service)
    cpu = max(10, int(round(_pick(rng, profile.cpu_request_millicores) * _pick(rng, CPU_JITTER) / 10) * 10))
    memory = max(16, int(round(_pick(rng, profile.memory_request_mib) * _pick(rng, MEMORY_JITTER) / 16) * 16))
    gpus = int(_pick(rng, profile.gpus))
    cpu_limit = bool(rng.random() < 0.5)
    command = _pick(rng, profile.commands)
    work_units = None
    if profile.work_argument:
        work_units = int(_pick(rng, profile.work_units))
        flag = profile.work_argument
        command = (*command, f"{flag}={work_units}") if not flag.startswith("-") else (*command, flag, str(work_units))
    main = _container(service.split("-")[-1] or "main", image, command, cpu, memory, cpu_limit, gpus)
    if profile.privileged or profile.capabilities:
        context: dict[str, Any] = {"privileged": True} if profile.privileged else {}
        if profile.capabilities:
            context["capabilities"] = {"add": list(profile.capabilities)}
        main["securityContext"] = context
    containers = [main]
    loads = [power_model.ContainerLoad(cpu, cpu * 2 if cpu_limit else None)]
    memory_total = memory
    spec: dict[str, Any] = {"containers": containers, **{key: True for key in profile.host_namespaces}}
    if profile.kinds[0] in ("Deployment", "StatefulSet") and rng.random() < 0.25:
        # A service-mesh proxy beside the app: a second running container.
        containers.append(_container("istio-proxy", "docker.io/istio/proxyv2:1.22.1", (), 100, 128, False, 0))
        loads.append(power_model.ContainerLoad(100, None))
        memory_total += 128
    if rng.random() < 0.15:
        # A native sidecar (restartPolicy: Always), which runs for the pod's whole life.
        sidecar = _container("log-shipper", "fluent/fluent-bit:3.1", (), 50, 64, False, 0)
        sidecar["restartPolicy"] = "Always"
        spec["initContainers"] = [sidecar]
        loads.append(power_model.ContainerLoad(50, None))
        memory_total += 64
    elif rng.random() < 0.2:
        migrate = _container("migrate", image, ("migrate", "--up"), 100, 128, False, 0)
        spec["initContainers"] = [migrate]
    volume_count = int(rng.integers(0, len(profile.volumes) + 1))
    if volume_count:
        spec["volumes"] = [_volume(source, i, service) for i, source in enumerate(profile.volumes[:volume_count])]
    if profile.runtime_class:
        spec["runtimeClassName"] = profile.runtime_class
    if profile.priority_class:
        spec["priorityClassName"] = profile.priority_class
    if profile.instance_types:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": _pick(rng, profile.instance_types)}
    if kind in ("Job", "CronJob", "Pod"):
        # A Job's pods must not restart in place (the API refuses Always); a bare Pod doing batch
        # work (a CI build pod) runs once to completion, a debug shell until it is deleted
        # (bench.cluster_sim lives them so).
        spec["restartPolicy"] = "Never" if kind != "Pod" or profile.work_argument else "Always"
    return spec, loads, memory_total, work_units


def _wrap(kind: str, name: str, namespace: str, labels: dict[str, str], pod_spec: dict[str, Any], pods: int) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace, "labels": dict(labels)}
    template = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    selector = {"matchLabels": {"app.kubernetes.io/name": labels["app.kubernetes.io/name"]}}
    if kind == "Pod":
        body: dict[str, Any] = {"spec": pod_spec}
    elif kind == "Deployment":
        body = {"spec": {"replicas": pods, "selector": selector, "template": template}}
    elif kind == "StatefulSet":
        body = {"spec": {"replicas": pods, "serviceName": name, "selector": selector, "template": template}}
    elif kind == "DaemonSet":
        body = {"spec": {"selector": selector, "template": template}}
    elif kind == "Job":
        body = {"spec": {"parallelism": pods, "completions": pods, "backoffLimit": 2, "template": template}}
    else:  # CronJob: its runs stop at an hour (bench.cluster_sim cuts longer ones: DeadlineExceeded)
        body = {"spec": {"schedule": "17 * * * *", "jobTemplate": {"spec": {
            "parallelism": pods, "backoffLimit": 3, "activeDeadlineSeconds": 3600, "template": template}}}}
    return {"apiVersion": KINDS_BY_NAME[kind].api_version, "kind": kind, "metadata": metadata, **body}


def draw_workload(rng: np.random.Generator, index: int) -> WorkloadDraw:
    """Workload number `index` (names are unique per index) drawn from the catalogue."""
    profile = PROFILES[int(rng.choice(len(PROFILES), p=_PROFILE_SHARES))]
    team = _pick(rng, TEAMS)
    service = f"{_pick(rng, DOMAINS)}-{_pick(rng, profile.suffixes)}"
    kind = _pick(rng, profile.kinds)
    name = f"{service}-{index:06d}"
    labels = {"app.kubernetes.io/name": service, "app.kubernetes.io/component": profile.key, "team": team}
    pod_spec, loads, memory_mib, work_units = _pod_spec(profile, rng, team, service, kind)
    pods = 1 if kind in ("Pod", "DaemonSet") else int(rng.choice([1, 1, 2, 2, 3, 4]))
    manifest = _wrap(kind, name, team, labels, pod_spec, pods)
    request = to_inference_request(manifest)
    gpu = gpu_product(request.gpu_product) if request.gpu_product else None
    spec_power = power_model.pod_power_watts(
        loads, memory_mib, request.gpu_count, profile.cpu_utilisation, profile.gpu_utilisation, profile.idle_busy_cores,
        profile.at_limit, gpu.idle_watts if gpu else power_model.GPU_IDLE_WATTS,
        gpu.max_watts if gpu else power_model.GPU_MAX_WATTS)
    return WorkloadDraw(manifest, profile, request, spec_power, power_model.workload_factor(rng), pods, work_units)


def draw_workloads(count: int, seed: int) -> list[WorkloadDraw]:
    rng = np.random.default_rng(seed)
    return [draw_workload(rng, i) for i in range(count)]


def measured_training_rows(draws: list[WorkloadDraw], seed: int, windows: int = 1440) -> np.ndarray:
    """Per workload, the mean power a week of measurements would give (W): the truth times the
    workload factor, with the per-window noise averaged over `windows` windows (its standard
    error, not a simulation of every window, so millions of rows stay cheap)."""
    rng = np.random.default_rng(seed)
    truth = np.array([d.mean_power_watts for d in draws])
    relative_error = power_model.WINDOW_NOISE_SIGMA / math.sqrt(windows)
    return truth * np.exp(rng.normal(0.0, relative_error, len(draws)))
