"""The webhook's own commands: ``serve`` (the admission webhook over TLS), and offline ``predict``,
``diff`` (what a change to manifests does to power, energy and carbon) and ``regions``.

``webhook/cli.py`` assembles them with ``certs`` and ``train`` into ``energetiscope``. Only light
modules are imported here: the server, scikit-learn and pandas load in the command that needs
them, so ``energetiscope --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from webhook.model.prior import PriorCoefficients, PriorPredictor
from webhook.textable import align_columns

if TYPE_CHECKING:
    from webhook.model.manifests import ManifestError

_DEFAULTS = PriorCoefficients()


def _prior_options(func):  # type: ignore[no-untyped-def]
    options = [
        click.option("--prior-cpu-min-watts", type=float, default=_DEFAULTS.cpu_min_watts_per_vcpu,
                     envvar="ENERGETISCOPE_PRIOR_CPU_MIN_WATTS", help="W per idle vCPU."),
        click.option("--prior-cpu-max-watts", type=float, default=_DEFAULTS.cpu_max_watts_per_vcpu,
                     envvar="ENERGETISCOPE_PRIOR_CPU_MAX_WATTS", help="W per fully busy vCPU."),
        click.option("--prior-utilisation", type=float, default=_DEFAULTS.utilisation,
                     envvar="ENERGETISCOPE_PRIOR_UTILISATION", help="Assumed average CPU utilisation, 0..1."),
        click.option("--prior-pue", type=float, default=_DEFAULTS.pue, envvar="ENERGETISCOPE_PRIOR_PUE",
                     help="Power usage effectiveness multiplier."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _prior(cpu_min: float, cpu_max: float, utilisation: float, pue: float) -> PriorCoefficients:
    try:
        return PriorCoefficients(
            cpu_min_watts_per_vcpu=cpu_min,
            cpu_max_watts_per_vcpu=cpu_max,
            utilisation=utilisation,
            utilisation_p10=min(_DEFAULTS.utilisation_p10, utilisation),
            utilisation_p90=max(_DEFAULTS.utilisation_p90, utilisation),
            pue=pue,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--host", default="0.0.0.0", envvar="ENERGETISCOPE_HOST", help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, envvar="ENERGETISCOPE_PORT")
@click.option("--cert-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/energetiscope/tls"),
              envvar="ENERGETISCOPE_CERT_DIR", help="Directory holding tls.crt and tls.key.")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ENERGETISCOPE_MODEL_PATH", help="Trained model artifact; without it the prior predicts.")
@click.option("--model-sha256", default=None, envvar="ENERGETISCOPE_MODEL_SHA256",
              help="Refuse an artifact whose sha256 differs.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="info", envvar="ENERGETISCOPE_LOG_LEVEL")
@click.option("--access-log/--no-access-log", default=False, envvar="ENERGETISCOPE_ACCESS_LOG")
@click.option("--annotate-owned-pods/--no-annotate-owned-pods", default=False,
              envvar="ENERGETISCOPE_ANNOTATE_OWNED_PODS",
              help="Also annotate Pods that have a controller (their owner is annotated already).")
@click.option("--watch-interval", type=click.FloatRange(min=0.1), default=5.0,
              envvar="ENERGETISCOPE_WATCH_INTERVAL_SECONDS", help="Seconds between checks of the model file.")
@click.option("--cache-entries", type=click.IntRange(min=0), default=4096, envvar="ENERGETISCOPE_CACHE_ENTRIES",
              help="pod predictions, and workload objects already read, kept in memory (each); 0 keeps none")
@click.option("--max-body-bytes", type=click.IntRange(min=1024), default=3 * 2**20,
              envvar="ENERGETISCOPE_MAX_BODY_BYTES")
@click.option("--policy-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ENERGETISCOPE_POLICY_FILE", help="Energy budget policy (YAML); reloaded when it changes.")
@click.option("--kube-access", default="auto", envvar="ENERGETISCOPE_KUBE_ACCESS",
              help="How the budget inventory reads the cluster: auto (in-cluster when in a pod), off, "
                   "or a kubeconfig path.")
@click.option("--review-timeout", type=click.FloatRange(min=0.05), default=2.0,
              envvar="ENERGETISCOPE_REVIEW_TIMEOUT_SECONDS",
              help="Seconds to answer a review before failing open; keep it below the webhook timeoutSeconds.")
@click.option("--max-concurrent-reviews", type=click.IntRange(min=1), default=8,
              envvar="ENERGETISCOPE_MAX_CONCURRENT_REVIEWS")
@click.option("--prediction-process/--no-prediction-process", default=True, envvar="ENERGETISCOPE_PREDICTION_PROCESS",
              help="Predict a trained model's cache misses in a process of its own (else in worker threads).")
@click.option("--max-connections", type=click.IntRange(min=1), default=1000, envvar="ENERGETISCOPE_MAX_CONNECTIONS",
              help="Beyond this, connections get HTTP 503 at once.")
@click.option("--debug-endpoints/--no-debug-endpoints", default=True, envvar="ENERGETISCOPE_DEBUG_ENDPOINTS",
              help="Serve /predict, /infer/from-yaml and /predict/from-yaml.")
@click.option("--carbon-region", default=None, envvar="ENERGETISCOPE_CARBON_REGION",
              help="Cloud region or ISO alpha-3 country of the cluster's grid, for the carbon annotations "
                   "(`energetiscope regions`); a pod's topology.kubernetes.io/region node selector wins.")
@click.option("--grid-intensity", type=click.FloatRange(min=0), default=None, envvar="ENERGETISCOPE_GRID_INTENSITY",
              help="The cluster's grid in g CO2e/kWh, instead of --carbon-region.")
@click.option("--carbon-pue", type=click.FloatRange(1.0, 5.0), default=1.0, envvar="ENERGETISCOPE_CARBON_PUE",
              help="Data-centre PUE applied to the energy for carbon.")
@click.option("--workload-metrics-max-series", type=click.IntRange(min=0), default=0,
              envvar="ENERGETISCOPE_WORKLOAD_METRICS_MAX_SERIES",
              help="Export energetiscope_workload_predicted_watts for this many of the largest workloads; 0: none.")
@_prior_options
def serve(host: str, port: int, cert_dir: Path, model_path: Path | None, model_sha256: str | None,
          log_level: str, access_log: bool, annotate_owned_pods: bool, watch_interval: float,
          cache_entries: int, max_body_bytes: int, policy_file: Path | None, kube_access: str, review_timeout: float,
          max_concurrent_reviews: int, prediction_process: bool, max_connections: int, debug_endpoints: bool,
          carbon_region: str | None,
          grid_intensity: float | None, carbon_pue: float, workload_metrics_max_series: int,
          prior_cpu_min_watts: float, prior_cpu_max_watts: float,
          prior_utilisation: float, prior_pue: float) -> None:
    """Run the admission webhook over TLS."""
    from webhook.admission.mutate import MutationSettings
    from webhook.http.server import ServeSettings, serve as run

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServeSettings(
        cert_dir=cert_dir, host=host, port=port, model_path=model_path, model_sha256=model_sha256,
        log_level=log_level, access_log=access_log, watch_interval_seconds=watch_interval,
        max_body_bytes=max_body_bytes, cache_entries=cache_entries,
        mutation=MutationSettings(annotate_owned_pods=annotate_owned_pods,
                                  carbon=carbon_settings(carbon_region, grid_intensity, carbon_pue, "--carbon-region")),
        prior=_prior(prior_cpu_min_watts, prior_cpu_max_watts, prior_utilisation, prior_pue),
        policy_file=policy_file, kube_access=kube_access, review_timeout_seconds=review_timeout,
        max_concurrent_reviews=max_concurrent_reviews, prediction_process=prediction_process,
        max_connections=max_connections, debug_endpoints=debug_endpoints, workload_metrics_max_series=workload_metrics_max_series,
    )
    try:
        run(settings)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


def _offline_service(model_path: Path | None, prior: PriorCoefficients,
                     error: type[click.ClickException] = click.ClickException):  # type: ignore[no-untyped-def]
    """The prediction service the offline commands use: the trained model, or the prior."""
    from webhook.model.service import PredictionService

    service = PredictionService(PriorPredictor(prior), model_path=model_path)
    # A server logs that it serves the prior when its model will not load; here that is an error.
    service_log = logging.getLogger("webhook.model.service")
    level = service_log.level
    service_log.setLevel(logging.CRITICAL)
    try:
        service.load()
    finally:
        service_log.setLevel(level)
    if service.status().error:
        raise error(service.status().error)
    return service


def _manifest_sources(paths: tuple[str, ...]) -> list[tuple[str, str | ManifestError]]:
    """(name, text) of each file to read: a file, the manifests under a directory (recursively), or
    '-' for stdin; UTF-8 all. A file of a directory that cannot be read (not UTF-8, no permission)
    comes with its ManifestError instead of its text, for the caller to report beside the rest; a
    path that is not there, or standard input that is not UTF-8, stops the command."""
    from webhook.model.manifests import STDIN_PATH, ManifestError, manifest_file_text, manifest_files, manifest_texts

    if paths.count(STDIN_PATH) > 1:
        raise click.ClickException("'-' (standard input) may be given once")
    sources: list[tuple[str, str | ManifestError]] = []
    try:
        for path in paths:
            if path == STDIN_PATH:
                sources.extend(manifest_texts(path))
                continue
            for file in manifest_files(path):
                try:
                    sources.append((str(file), manifest_file_text(file)))
                except ManifestError as exc:
                    sources.append((str(file), exc))
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    return sources


@click.command()
@click.argument("manifests", nargs=-1, required=True)
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ENERGETISCOPE_MODEL_PATH", help="Trained model artifact; without it the prior predicts.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
@_prior_options
def predict(manifests: tuple[str, ...], model_path: Path | None, output: str, prior_cpu_min_watts: float,
            prior_cpu_max_watts: float, prior_utilisation: float, prior_pue: float) -> None:
    """Predict offline for the workloads in MANIFESTS: YAML or JSON files (many documents, Lists),
    directories (their *.yaml, *.yml and *.json, recursively) or '-' for stdin. Each answer names
    its file and document."""
    from webhook.model.report import predict_out
    from webhook.model.manifests import ManifestError, read_manifests

    service = _offline_service(model_path, _prior(prior_cpu_min_watts, prior_cpu_max_watts, prior_utilisation,
                                                  prior_pue))
    rows: list[dict] = []  # type: ignore[type-arg]
    skipped: list[dict] = []  # type: ignore[type-arg]
    errors: list[dict] = []  # type: ignore[type-arg]
    sources = _manifest_sources(manifests)
    for name, text in sources:
        try:
            report = read_manifests(text, max_documents=None) if isinstance(text, str) else text  # any size, as diff
        except ManifestError as exc:
            report = exc
        if isinstance(report, ManifestError):
            # The other files are still predicted, as `kubectl apply -R` applies the rest of a
            # directory; the exit code says that something was not read.
            errors.append({"file": name, "document": None, "item": None, "field": None,
                           "problem": str(report).removeprefix(f"{name}: ")})
            continue
        rows.extend({"file": name, **where.as_dict(), **predict_out(service.predict(r))} for where, r in report.requests)
        skipped.extend({"file": name, **s} for s in report.skipped)
        errors.extend({"file": name, **e} for e in report.errors)
    if output == "json":
        click.echo(json.dumps({"predictions": rows, "skipped": skipped, "errors": errors}, indent=2))
    else:
        _print_table(rows, skipped, errors, with_files=len(sources) > 1)
    if errors:
        sys.exit(1)


def _run_cells(row: dict) -> tuple[str, str, str, str]:  # type: ignore[type-arg]
    """Run seconds, kJ per run, runs and kJ per day; "-" where there is no figure, and "<=" before
    figures that are an upper bound (run time from activeDeadlineSeconds)."""
    bound = "<=" if row["run_bound"] == "upper" else ""

    def cell(value: float | None, scale: float, digits: int, prefix: str = "") -> str:
        return "-" if value is None else f"{prefix}{value / scale:.{digits}f}"

    return (cell(row["run_seconds"], 1, 0, bound), cell(row["energy_joules_per_run"], 1000, 1, bound),
            cell(row["runs_per_day"], 1, 2), cell(row["energy_joules_per_day"], 1000, 1, bound))


def _document(entry: dict, with_files: bool) -> str:  # type: ignore[type-arg]
    """Where an answer's object is: its document (.item in a List), after its file when there are several."""
    doc = str(entry["document"]) + (f".{entry['item']}" if entry.get("item") is not None else "")
    return f"{entry['file']}:{doc}" if with_files else doc


def _print_table(rows: list[dict], skipped: list[dict], errors: list[dict],  # type: ignore[type-arg]
                 with_files: bool = False) -> None:
    header = ("DOC", "KIND", "NAMESPACE/NAME", "PODS", "POD W", "P10-P90 W", "WORKLOAD W", "kJ/h", "RUN S", "kJ/RUN",
              "RUNS/DAY", "kJ/DAY", "BASIS")
    table = [header]
    for r in rows:
        doc = _document(r, with_files)
        pods = f"{r['workload_pods']}" + ("/node" if r["workload_power_scope"] == "per-node" else "")
        table.append((
            doc, r["workload_kind"], f"{r['namespace']}/{r['workload_name']}", pods,
            f"{r['pod_power_watts']:.2f}", f"{r['pod_power_watts_p10']:.2f}-{r['pod_power_watts_p90']:.2f}",
            f"{r['workload_power_watts']:.2f}", f"{r['energy_joules_per_hour'] / 1000:.1f}", *_run_cells(r), r["basis"],
        ))
    for line in align_columns(table):
        click.echo(line)
    for r in rows:
        if r["run_problem"]:
            click.echo(f"no runs per day for document {_document(r, with_files)}: {r['run_problem']}", err=True)
    for s in skipped:
        click.echo(f"skipped document {_document(s, with_files)}: {s['reason']}", err=True)
    for e in errors:
        if e["document"] is None:  # the file itself could not be read
            click.echo(f"error in {e['file']}: {e['problem']}", err=True)
        else:
            click.echo(f"error in document {_document(e, with_files)}: {e['field']}: {e['problem']}", err=True)


class InputError(click.ClickException):
    """A call that cannot run (unreadable input, unknown region): exit 2, like a usage error, so a
    CI gate (exit 1) is never confused with a broken call."""

    exit_code = 2


_DIFF_OUTPUTS = ["table", "json", "markdown", "github"]


def _carbon_options(func):  # type: ignore[no-untyped-def]
    options = [
        click.option("--region", default=None, help="Cloud region (us-east-1, europe-west4, eastus) or ISO alpha-3 "
                     "country code (DEU) whose grid the pods draw from; see `energetiscope regions`."),
        click.option("--grid-intensity", type=click.FloatRange(min=0), default=None,
                     help="Grid carbon intensity in g CO2e/kWh, instead of --region."),
        click.option("--pue", type=click.FloatRange(1.0, 5.0), default=1.0,
                     help="Data-centre PUE applied to the energy for carbon (1.0: IT energy only)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def carbon_settings(region: str | None, grid_intensity: float | None, pue: float,
                    region_flag: str = "--region"):  # type: ignore[no-untyped-def]
    """CarbonSettings from the command line; raises click.UsageError (exit 2) on a bad choice."""
    from webhook.model.carbon import CarbonSettings, UnknownRegion, custom_intensity, grid_intensity as lookup

    if region is not None and grid_intensity is not None:
        raise click.UsageError(f"give {region_flag} or --grid-intensity, not both")
    try:
        default = (lookup(region) if region is not None
                   else custom_intensity(grid_intensity) if grid_intensity is not None else None)
        return CarbonSettings(default=default, pue=pue)
    except UnknownRegion as exc:
        raise click.UsageError(str(exc)) from None


@click.command()
@click.argument("base")
@click.argument("head")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ENERGETISCOPE_MODEL_PATH", help="Trained model artifact; without it the prior predicts.")
@click.option("--output", "-o", type=click.Choice(_DIFF_OUTPUTS), default="table")
@_carbon_options
@click.option("--fail-above-watts", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when the total power rises by more than this many W.")
@click.option("--fail-above-percent", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when the total power rises by more than this percentage.")
@_prior_options
def diff(base: str, head: str, model_path: Path | None, output: str, region: str | None,
         grid_intensity: float | None, pue: float, fail_above_watts: float | None,
         fail_above_percent: float | None, prior_cpu_min_watts: float, prior_cpu_max_watts: float,
         prior_utilisation: float, prior_pue: float) -> None:
    """Compare predicted power, energy and carbon between BASE and HEAD manifests.

    Each is a file, a directory (*.yaml, *.yml, *.json, recursively) or '-' for stdin (one side
    at most). Exit 1 when a --fail-above gate trips, 2 when the call itself is wrong.
    """
    from webhook.diff import DiffInputError, diff_manifests, read_side, render
    from webhook.model.manifests import STDIN_PATH

    if base == STDIN_PATH and head == STDIN_PATH:
        raise click.UsageError("only one of BASE and HEAD can be '-' (stdin)")
    carbon = carbon_settings(region, grid_intensity, pue)
    service = _offline_service(model_path, _prior(prior_cpu_min_watts, prior_cpu_max_watts, prior_utilisation,
                                                  prior_pue), error=InputError)
    try:
        sides = [read_side(path, side, service, carbon)  # type: ignore[arg-type]
                 for path, side in ((base, "before"), (head, "after"))]
    except DiffInputError as exc:
        raise InputError(str(exc)) from None
    result = diff_manifests(sides[0], sides[1], carbon, service.status().model_id)
    failures = result.gate_failures(fail_above_watts, fail_above_percent)
    click.echo(render(result, output, failures))
    if output in ("table", "markdown"):
        for error in result.errors:
            click.echo(f"not read: {error['side']} {error['file']}:{error['line']}: {error['kind']} "
                       f"{error['namespace']}/{error['name']}: {error['field']}: {error['problem']}", err=True)
    for reason in failures:
        click.echo(f"energetiscope diff: gate failed: {reason}", err=True)
    if failures:
        sys.exit(1)


@click.command()
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table")
def regions(output: str) -> None:
    """List the cloud regions and countries with a known grid carbon intensity (g CO2e/kWh)."""
    from webhook.model.carbon import known_regions

    known = known_regions()
    if output == "json":
        click.echo(json.dumps([g.as_dict() for g in known], indent=2))
        return
    rows: list[tuple[object, ...]] = [("REGION", "PROVIDER", "g CO2e/kWh", "YEAR", "LOCATION", "SOURCE")]
    rows += [(g.region, g.provider, f"{g.grams_per_kwh:.1f}", g.year or "-", g.location, g.source) for g in known]
    for line in align_columns(rows):
        click.echo(line)
