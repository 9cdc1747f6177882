"""`energetiscope train ...`: the trainer's steps as click commands.

    energetiscope train collect  --out requests.ndjson [--watch 10m] [--namespace NS ...]
    energetiscope train labels   --prometheus URL --start T --end T [--step 60s] --out labels.parquet
    energetiscope train runs     --prometheus URL --start T --end T --out runs.parquet
    energetiscope train dataset  --runs runs.parquet --requests requests.ndjson --out run-dataset.parquet
    energetiscope train dataset  --labels labels.parquet --requests requests.ndjson --out dataset.parquet
    energetiscope train dataset  --measurements m.csv --manifests m.yaml --out dataset.parquet
    energetiscope train fit      --dataset dataset.parquet --out model.joblib
    energetiscope train evaluate --model model.joblib --dataset dataset.parquet --out-dir eval/
    energetiscope train run      --prometheus URL --start T --end T --requests requests.ndjson --workdir DIR

Each step reads the previous step's file, so each runs alone. The group is `train`; the main
`energetiscope` command adds it. `python -m trainer.cli ...` runs the same group directly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trainer.collect import run_collect
from trainer.crossval import DEFAULT_K_GRID, DEFAULT_SELECTION_MAX_GROUPS
from trainer.dataset import DEFAULT_MEMORY_LIMIT, run_dataset
from trainer.dcgm import GpuChoice
from trainer.evaluate import run_evaluate
from trainer.fit import FitSettings, run_fit
from trainer.kepler import KeplerLine
from trainer.kube import COLLECTED_KINDS, KubeSettings, WorkloadReader, api_client
from trainer.labels import DEFAULT_QUERIES_IN_FLIGHT, MAX_QUERIES_IN_FLIGHT, LabelsRunSummary, parse_duration_seconds, run_labels
from trainer.measurements import run_measurement_dataset
from trainer.metrics import MethodMetrics, metrics_table
from trainer.inputs import InputFileError
from trainer.prometheus import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_BACKOFF_SECONDS,
    DEFAULT_RETRY_MAX_BACKOFF_SECONDS,
    PrometheusError,
    RetryPolicy,
)
from trainer.run_dataset import run_run_dataset
from trainer.model_card import card_metrics
from trainer.runs import run_runs
from trainer.targets import DEFAULT_MIN_ACTIVE_WINDOWS, DEFAULT_TARGET_UNIT, TARGET_UNITS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*options: Decorator) -> Decorator:
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def _duration(value: str, name: str) -> float:
    try:
        return parse_duration_seconds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _k_grid(value: str) -> tuple[int, ...]:
    try:
        grid = tuple(int(k) for k in value.split(","))
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of integers: {value!r}", param_hint="--k") from None
    if not grid or min(grid) < 1:
        raise click.BadParameter("k values must be >= 1", param_hint="--k")
    return grid


_kube_options = _options(
    click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
                 help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config, else in-cluster)."),
    click.option("--context", default=None, help="kubeconfig context (default: the current one)."),
    click.option("--in-cluster", is_flag=True, help="Use the pod's service account."),
    click.option("--request-timeout", default="60s", help="Timeout of one API request."),
)


def _kube_errors(action: Callable[[], Any], *, other_failures: bool = True) -> Any:
    """Run `action`; API and kubeconfig problems become one-line errors, not tracebacks. With
    `other_failures`, so do RuntimeError and OSError (a failed watch, an unreachable server),
    which is right only when the action talks to nothing but the Kubernetes API."""
    from kubernetes.client import ApiException
    from kubernetes.config import ConfigException

    try:
        return action()
    except ConfigException as exc:
        raise click.ClickException(f"cannot configure the Kubernetes client: {exc}") from None
    except ApiException as exc:
        raise click.ClickException(f"Kubernetes API answered {exc.status} {exc.reason}: {exc.body}") from None
    except (RuntimeError, OSError) as exc:
        if not other_failures:
            raise
        raise click.ClickException(f"Kubernetes API: {exc}") from None


def _kube_settings(kubeconfig: str | None, context: str | None, in_cluster: bool, request_timeout: str) -> KubeSettings:
    return KubeSettings(kubeconfig=kubeconfig, context=context, in_cluster=in_cluster,
                        request_timeout_seconds=_duration(request_timeout, "--request-timeout"))


_prometheus_options = _options(
    click.option("--prometheus", "prometheus_url", required=True, help="Prometheus base URL."),
    click.option("--start", required=True, help="Start, ISO 8601 (2025-10-30T08:00:00Z) or Unix seconds."),
    click.option("--end", required=True, help="End, ISO 8601 or Unix seconds."),
    click.option("--kepler-line", type=click.Choice([line.value for line in KeplerLine]), default=None,
                 help="Force the Kepler metric family (default: detected)."),
    click.option("--mode", "modes", multiple=True, help="Kepler <= 0.9 modes to sum (dynamic, idle)."),
    click.option("--component", "components", multiple=True, help="Kepler <= 0.9 components (total, package, dram, ...)."),
    click.option("--zone", "zones", multiple=True, help="Kepler >= 0.10 RAPL zones (package, dram, ...)."),
    click.option("--timeout", default="30s", help="Timeout of one Prometheus request."),
    click.option("--gpu", type=click.Choice([choice.value for choice in GpuChoice]), default="auto",
                 help="GPU energy added to each pod's: dcgm-exporter, Kepler's GPU series, auto (dcgm first), off."),
    click.option("--retries", type=click.IntRange(0), default=DEFAULT_RETRIES,
                 help="How often a Prometheus request that got no answer is tried again (0: fail at once)."),
    click.option("--retry-backoff", default=f"{DEFAULT_RETRY_BACKOFF_SECONDS:g}s",
                 help="Wait before the first retry; it doubles for each next one."),
    click.option("--retry-max-backoff", default=f"{DEFAULT_RETRY_MAX_BACKOFF_SECONDS:g}s",
                 help="Longest wait between two retries."),
)


def _retry_policy(retries: int, retry_backoff: str, retry_max_backoff: str) -> RetryPolicy:
    backoff = _duration(retry_backoff, "--retry-backoff")
    try:
        return RetryPolicy(retries=retries, backoff_seconds=backoff,
                           max_backoff_seconds=_duration(retry_max_backoff, "--retry-max-backoff"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--retry-max-backoff") from None


_labels_options = _options(
    _prometheus_options,
    click.option("--step", default="60s", help="Window length (60s, 5m, ...)."),
    click.option("--state", "states", multiple=True, help="Kepler >= 0.10 pod states (running, ...; 'all')."),
    click.option("--chunk", default="12h", help="Longest range of one Prometheus query."),
    click.option("--queries-in-flight", type=click.IntRange(1, MAX_QUERIES_IN_FLIGHT), default=DEFAULT_QUERIES_IN_FLIGHT, show_default=True,
                 help="Chunks asked of Prometheus before the oldest is read (1: one at a time)."),
    click.option("--kube-owner-fallback", is_flag=True,
                 help="Ask the Kubernetes API for the owners of pods kube-state-metrics never reported."),
    _kube_options,
)


def _labels(prometheus_url: str, start: str, end: str, step: str, out: Path, kepler_line: str | None,
            modes: tuple[str, ...], components: tuple[str, ...], zones: tuple[str, ...], states: tuple[str, ...],
            chunk: str, queries_in_flight: int, timeout: str, progress: bool, kube_owner_fallback: bool, gpu: str, kubeconfig: str | None,
            context: str | None, in_cluster: bool, request_timeout: str, retries: int, retry_backoff: str,
            retry_max_backoff: str) -> LabelsRunSummary:
    from trainer.api_owners import KubernetesOwnerFallback

    retry = _retry_policy(retries, retry_backoff, retry_max_backoff)

    def collect(owner_fallback: Any) -> LabelsRunSummary:
        try:
            return run_labels(prometheus_url, start, end, step, out, kepler_line=kepler_line, modes=modes,
                              components=components, zones=zones, states=states, chunk=chunk, timeout=timeout,
                              progress=progress, owner_fallback=owner_fallback, gpu=gpu, retry=retry,
                              queries_in_flight=queries_in_flight)
        except PrometheusError as exc:
            raise _prometheus_failed(exc, out) from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    if not kube_owner_fallback:
        summary = collect(None)
    else:
        settings = _kube_settings(kubeconfig, context, in_cluster, request_timeout)
        with _kube_errors(lambda: api_client(settings)) as api:
            fallback = KubernetesOwnerFallback(WorkloadReader(api, settings.request_timeout_seconds))
            summary = _kube_errors(lambda: collect(fallback), other_failures=False)
        click.echo(f"owner fallback: {fallback.lookups} Kubernetes API reads", err=True)
    click.echo(f"labels: {summary.row_count} rows, {summary.pod_count} pods, {summary.window_count} windows, "
               f"{summary.total_energy_joules:.1f} J ({summary.kepler_line or 'no Kepler data'}) -> {summary.path}")
    click.echo(summary.gpu_text())
    return summary


_fit_options = _options(
    click.option("--k", "k_grid", default=",".join(map(str, DEFAULT_K_GRID)), help="k values to try, comma-separated."),
    click.option("--weight-grid/--no-weight-grid", default=False, help="Also choose the encoder's block weights."),
    click.option("--selection-groups", type=click.IntRange(0), default=DEFAULT_SELECTION_MAX_GROUPS, show_default=True,
                 help="Beyond this many workloads (CV groups), choose among the candidates on a seeded sample of "
                      "this many, then fit and score the chosen on all; 0: choose on all."),
    click.option("--target-unit", type=click.Choice(TARGET_UNITS), default=DEFAULT_TARGET_UNIT,
                 help="One training target per workload spec, pod or pod-day."),
    click.option("--min-active-windows", type=click.IntRange(1), default=DEFAULT_MIN_ACTIVE_WINDOWS,
                 help="Windows with energy a pod needs to become a target."),
    click.option("--text-embedding", type=click.Choice(["auto", "tfidf", "sbert"]), default="auto",
                 help="The prototype baseline's embedding (auto: SBERT when installed, else TF-IDF)."),
    click.option("--model-id", default=None, help="Model id (default knn-<UTC time>-<training data sha8>)."),
    click.option("--runs-dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="Also fit the run model (a Job run's wall time) on `train dataset --runs`'s output."),
)


def _fit(dataset: Path, out: Path, k_grid: str, weight_grid: bool, target_unit: str, min_active_windows: int,
         text_embedding: str, model_id: str | None, progress: bool, runs_dataset: Path | None = None,
         selection_groups: int = DEFAULT_SELECTION_MAX_GROUPS) -> None:
    settings = FitSettings(k_grid=_k_grid(k_grid), weight_grid=weight_grid, target_unit=target_unit,
                           min_active_windows=min_active_windows, text_embedding=text_embedding, progress=progress,
                           selection_max_groups=selection_groups)
    try:
        outcome = run_fit(dataset, out, settings, model_id=model_id, runs_dataset_path=runs_dataset)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    card = outcome.card
    data = card["data"]
    click.echo(f"model {outcome.model_id}: {card['model']['description']}; {data['targets']} targets, "
               f"{data['pods']} pods, {data['workloads']} workloads")
    if data["excluded_pods"]:
        click.echo(f"left out: {data['excluded_pods']} pods with fewer than {data['min_active_windows']} active "
                   f"windows (--min-active-windows)")
    for warning in card.get("warnings", []):
        click.echo(f"warning: {warning}")
    cv = card["cross_validation"]
    click.echo(f"cross-validation: {cv['skipped']}" if "skipped" in cv else f"{cv['scheme']}\n{metrics_table(card_metrics(card, 'cross_validation'))}")
    if "runs" in card:
        runs = card["runs"]
        click.echo(f"run model: {runs['description']}; {runs['runs']} runs, {runs['groups']} Job templates")
        if "skipped" in runs:
            click.echo(f"run cross-validation: {runs['skipped']}")
        else:
            click.echo(f"{runs['scheme']}\n" + metrics_table([MethodMetrics(**m) for m in runs["run_seconds"]]))
            if runs["energy_joules_per_run"]:
                click.echo(metrics_table([MethodMetrics(**m) for m in runs["energy_joules_per_run"]]))
    click.echo(f"artifact {outcome.model_path} sha256 {outcome.sha256}; card {outcome.card_paths[0]}, {outcome.card_paths[1]}"
               f"; report {outcome.report_path}")


def _prometheus_failed(error: PrometheusError, out: Path) -> click.ClickException:
    """Prometheus failed for good (retries spent): say so, and that `out` was not written, since
    outputs are written only after every read succeeded."""
    kept = " (the previous file is unchanged)" if out.exists() else ""
    return click.ClickException(f"{error}\nnothing written to {out}{kept}")


class _TrainGroup(click.Group):
    """The `train` group: an unreadable input file is a one-line error naming it, never a traceback,
    in every step that reads one."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputFileError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_TrainGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def train() -> None:
    """Train the power model from Kepler measurements: collect, labels, dataset, fit, evaluate."""


@train.command()
@_kube_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("requests.ndjson"))
@click.option("--namespace", "namespaces", multiple=True, help="Only these namespaces (default: all).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(COLLECTED_KINDS), help="Only these kinds (default: all).")
@click.option("--watch", default=None, help="Also watch for this long (10m, 1h) to catch short-lived Jobs and Pods.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the summary, with every object that could not be read, as JSON.")
@click.option("--no-progress", is_flag=True)
def collect(kubeconfig: str | None, context: str | None, in_cluster: bool, request_timeout: str, out: Path,
            namespaces: tuple[str, ...], kinds: tuple[str, ...], watch: str | None, report: Path | None,
            no_progress: bool) -> None:
    """List (and watch) workloads in the Kubernetes API and write their InferenceRequests as NDJSON."""
    settings = _kube_settings(kubeconfig, context, in_cluster, request_timeout)
    watch_seconds = _duration(watch, "--watch") if watch else 0.0
    outcome = _kube_errors(lambda: run_collect(settings, out, kinds or COLLECTED_KINDS, namespaces or None,
                                               watch_seconds, progress=not no_progress))
    for failure in outcome.failures:
        click.echo(f"not readable: {failure.describe()}", err=True)
    if report is not None:
        report.write_text(json.dumps(outcome.summary(), indent=2) + "\n", encoding="utf-8")
    counts = ", ".join(f"{kind} {n}" for kind, n in outcome.objects_per_kind.items())
    click.echo(f"collected {len(outcome.requests)} requests ({outcome.controller_owned} controller-owned) from "
               f"{counts}; {outcome.watch_events} watch events; {len(outcome.failures)} objects not readable -> {out}")


@train.command()
@_labels_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("labels.parquet"))
@click.option("--no-progress", is_flag=True)
def labels(out: Path, no_progress: bool, **options: Any) -> None:
    """Per-pod energy and power per window from Kepler metrics in Prometheus."""
    _labels(out=out, progress=not no_progress, **options)


@train.command()
@_prometheus_options
@click.option("--gpu-step", default="60s", help="Window of dcgm-exporter's per-pod GPU energy.")
@click.option("--chunk", default="6h", help="Longest range of one raw-sample read.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs.parquet"))
def runs(prometheus_url: str, start: str, end: str, out: Path, retries: int, retry_backoff: str,
         retry_max_backoff: str, **options: Any) -> None:
    """One row per Job run: wall time, pod-seconds, energy (all pods and retries), outcome, and
    the pods whose energy Kepler does not have."""
    retry = _retry_policy(retries, retry_backoff, retry_max_backoff)
    try:
        summary = run_runs(prometheus_url, start, end, out, retry=retry, **options)
    except PrometheusError as exc:
        raise _prometheus_failed(exc, out) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(summary.describe())


@train.command()
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Kepler labels from `train labels`.")
@click.option("--runs", "runs_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Instead of --labels: Job runs from `train runs` (the run model's dataset).")
@click.option("--measurements", "measurements_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Instead of --labels: a measurement table, CSV or Parquet (see trainer/README.md).")
@click.option("--manifests", "manifest_paths", type=click.Path(exists=True, allow_dash=True), multiple=True,
              help="With --measurements: YAML/JSON manifests, a directory of them (recursive) or '-' for stdin (repeatable).")
@click.option("--requests", "requests_paths", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, help="NDJSON InferenceRequests (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("dataset.parquet"))
@click.option("--pod-spec-fallback", is_flag=True,
              help="Join a pod whose workload has no spec to the pod's own spec (marked join_rule=pod-spec).")
@click.option("--memory-limit", default=DEFAULT_MEMORY_LIMIT,
              help="With --labels: DuckDB's memory for the join and sort (e.g. 512MB, 4GB); beyond it, it spills to a "
                   "temporary directory beside --out.")
def dataset(labels_path: Path | None, runs_path: Path | None, measurements_path: Path | None,
            manifest_paths: tuple[str, ...], requests_paths: tuple[Path, ...], out: Path, pod_spec_fallback: bool,
            memory_limit: str) -> None:
    """Join labels (or runs, or a measurement table) to specs, with what did not join and why."""
    if sum(path is not None for path in (labels_path, runs_path, measurements_path)) != 1:
        raise click.UsageError("give --labels (Kepler), --runs (Job runs) or --measurements (a measurement table), one of them")
    if runs_path is not None:
        if manifest_paths or not requests_paths or pod_spec_fallback:
            raise click.UsageError("--runs takes its specs from --requests (NDJSON from `train collect`)")
        summary = run_run_dataset(runs_path, requests_paths, out)
    elif labels_path is not None:
        if manifest_paths or not requests_paths:
            raise click.UsageError("--labels takes its specs from --requests (NDJSON from `train collect`)")
        try:
            summary = run_dataset(labels_path, requests_paths, out, pod_spec_fallback=pod_spec_fallback,
                                  memory_limit=memory_limit)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        assert measurements_path is not None
        if not manifest_paths and not requests_paths:
            raise click.UsageError("--measurements needs specs: --manifests PATH or --requests NDJSON")
        if pod_spec_fallback:
            raise click.UsageError("--pod-spec-fallback is for --labels: a measurement row names its workload")
        try:
            summary = run_measurement_dataset(measurements_path, out, manifest_paths=manifest_paths,
                                              requests_paths=requests_paths)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(summary.describe())
    click.echo(f"-> {out}")


@train.command()
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("model.joblib"))
@_fit_options
@click.option("--no-progress", is_flag=True)
def fit(dataset: Path, out: Path, no_progress: bool, **options: Any) -> None:
    """Fit the model (and, with --runs-dataset, the run model), chosen by grouped CV; write artifact and card."""
    _fit(dataset, out, progress=not no_progress, **options)


@train.command()
@click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("evaluation"))
@click.option("--model-sha256", default=None, help="Refuse an artifact with another sha256.")
def evaluate(model_path: Path, dataset: Path, out_dir: Path, model_sha256: str | None) -> None:
    """Score an existing model on a dataset, with a predicted-vs-measured and a residual plot."""
    try:
        outcome = run_evaluate(model_path, dataset, out_dir, expected_sha256=model_sha256)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{outcome.model_id}: {outcome.report['note']}")
    click.echo(metrics_table(outcome.metrics))
    click.echo(f"-> {', '.join(str(p) for p in outcome.paths.values())}")


@train.command()
@_labels_options
@click.option("--requests", "requests_paths", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              multiple=True, required=True, help="NDJSON InferenceRequests from `collect` (repeatable).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              help="Where labels.parquet, dataset.parquet and model.joblib go.")
@click.option("--pod-spec-fallback", is_flag=True)
@_fit_options
@click.option("--no-progress", is_flag=True)
def run(requests_paths: tuple[Path, ...], workdir: Path, pod_spec_fallback: bool, k_grid: str, weight_grid: bool,
        target_unit: str, min_active_windows: int, text_embedding: str, model_id: str | None, no_progress: bool,
        runs_dataset: Path | None, selection_groups: int, **label_options: Any) -> None:
    """labels -> dataset -> fit in one go."""
    workdir.mkdir(parents=True, exist_ok=True)
    _labels(out=workdir / "labels.parquet", progress=not no_progress, **label_options)
    summary = run_dataset(workdir / "labels.parquet", requests_paths, workdir / "dataset.parquet",
                          pod_spec_fallback=pod_spec_fallback)
    click.echo(summary.describe())
    _fit(workdir / "dataset.parquet", workdir / "model.joblib", k_grid, weight_grid, target_unit, min_active_windows,
         text_embedding, model_id, not no_progress, runs_dataset, selection_groups)


if __name__ == "__main__":
    train(sys.argv[1:], prog_name="python -m trainer.cli")
