"""Truncated or corrupt intermediate files given to the trainer's steps: each is a one-line error
(exit 1) that names the file, never a traceback.

Every reader is covered with the same damages: the file cut to half its size (a copy cut short),
its last bytes overwritten (a damaged Parquet footer or zip directory), an empty file, and some
other file's text. The valid files are written by the trainer's own writers first, so a damaged
file differs from a good one only by the damage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from tests.trainer.synthetic_dataset import dataset as synthetic_dataset
from tests.trainer.synthetic_dataset import request
from trainer.cli import train
from trainer.collect import read_requests, write_requests
from trainer.dataset import write_dataset
from trainer.inputs import InputFileError
from trainer.labels import empty_labels_frame, write_labels
from trainer.run_fit import read_run_targets
from trainer.runs import RUN_COLUMNS, write_runs
from webhook.model.artifact import build_pipeline, save_model
from webhook.model.schema import ContainerSpec, InferenceRequest


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite_tail(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-64] + b"\xff" * 64)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _other_text(path: Path) -> None:
    path.write_text("window_start,namespace,pod\n2025-10-30T08:00:00Z,apps,web-0\n", encoding="utf-8")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "tail-overwritten": _overwrite_tail,
    "empty": _empty,
    "other-text": _other_text,
}


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(train, list(args))


def _assert_clear_error(result: Result, path: Path) -> None:
    """Exit 1 through click (a SystemExit, not an exception escaping), the file named, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert str(path) in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output


def _evaluate(model: Path, dataset: Path, tmp_path: Path) -> Result:
    return _invoke("evaluate", "--model", str(model), "--dataset", str(dataset), "--out-dir", str(tmp_path / "eval"))


def _requests_file(tmp_path: Path) -> Path:
    return write_requests([request("web", 250), request("api", 500)], tmp_path / "requests.ndjson")


def _labels_file(tmp_path: Path) -> Path:
    frame = empty_labels_frame()
    row = {
        "window_start": pd.Timestamp("2025-10-30T08:00:00Z"), "window_seconds": 60, "namespace": "apps",
        "pod": "web-0", "workload_kind": "Deployment", "workload_name": "web", "energy_joules": 600.0,
        "power_watts": 10.0, "kepler_line": "kepler-0.10", "gpu_energy_joules": 0.0,
    }
    frame = pd.concat([frame, pd.DataFrame([row] * 50)], ignore_index=True).astype(frame.dtypes.to_dict())
    return write_labels(frame, tmp_path / "labels.parquet")


def _dataset_file(tmp_path: Path) -> Path:
    pods = [(request(f"w{i}", 100 * (i + 1)), f"w{i}-0", [60.0 * (i + 1)] * 8) for i in range(4)]
    return write_dataset(synthetic_dataset(pods), tmp_path / "dataset.parquet")


def _runs_file(tmp_path: Path) -> Path:
    frame = pd.DataFrame({column: pd.Series(dtype="object") for column in RUN_COLUMNS})
    return write_runs(frame, tmp_path / "runs.parquet")


def _model_file(tmp_path: Path) -> Path:
    requests = [InferenceRequest(workload_kind="Deployment",
                                 containers=[ContainerSpec(name="c", image="nginx", req_cpu_mcpu=m)])
                for m in (100, 200, 400, 800)]
    path = tmp_path / "model.joblib"
    save_model(path, build_pipeline(n_neighbors=2).fit(requests, [5.0, 6.0, 7.0, 8.0]), "corrupt-test")
    return path


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_labels_table_is_named_by_train_dataset(tmp_path: Path, damage: str) -> None:
    labels = _labels_file(tmp_path)
    DAMAGES[damage](labels)
    result = _invoke("dataset", "--labels", str(labels), "--requests", str(_requests_file(tmp_path)),
                     "--out", str(tmp_path / "dataset.parquet"))
    _assert_clear_error(result, labels)
    assert "labels table" in result.output
    assert not (tmp_path / "dataset.parquet").exists()


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_runs_table_is_named_by_train_dataset_runs(tmp_path: Path, damage: str) -> None:
    runs = _runs_file(tmp_path)
    DAMAGES[damage](runs)
    result = _invoke("dataset", "--runs", str(runs), "--requests", str(_requests_file(tmp_path)),
                     "--out", str(tmp_path / "run-dataset.parquet"))
    _assert_clear_error(result, runs)
    assert "runs table" in result.output


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_dataset_is_named_by_fit_and_evaluate(tmp_path: Path, damage: str) -> None:
    dataset = _dataset_file(tmp_path)
    model = _model_file(tmp_path)
    DAMAGES[damage](dataset)
    result = _invoke("fit", "--dataset", str(dataset), "--out", str(tmp_path / "fitted.joblib"), "--no-progress")
    _assert_clear_error(result, dataset)
    assert "trainer dataset" in result.output and not (tmp_path / "fitted.joblib").exists()
    _assert_clear_error(_evaluate(model, dataset, tmp_path), dataset)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_model_artifact_is_named_by_evaluate(tmp_path: Path, damage: str) -> None:
    dataset = _dataset_file(tmp_path)
    model = _model_file(tmp_path)
    DAMAGES[damage](model)
    _assert_clear_error(_evaluate(model, dataset, tmp_path), model)
    assert not (tmp_path / "eval" / "evaluation.json").exists()


@pytest.mark.parametrize(
    "damage, line",
    [
        ("truncated", 2),  # the last line cut inside its JSON
        ("invalid-utf8", 1),
        ("binary", 1),
    ],
)
def test_damaged_requests_ndjson_is_named_with_its_line(tmp_path: Path, damage: str, line: int) -> None:
    requests = _requests_file(tmp_path)
    data = requests.read_bytes()
    if damage == "truncated":
        requests.write_bytes(data[: len(data) - 20])
    elif damage == "invalid-utf8":
        requests.write_bytes(b'{"workload_kind": "Pod", "name": "\xff\xfe"}\n' + data)
    else:
        requests.write_bytes(bytes(range(256)) * 4)
    result = _invoke("dataset", "--labels", str(_labels_file(tmp_path)), "--requests", str(requests),
                     "--out", str(tmp_path / "dataset.parquet"))
    _assert_clear_error(result, requests)
    assert f"line {line}:" in result.output
    with pytest.raises(InputFileError, match="NDJSON InferenceRequests"):
        read_requests(requests)


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_dataset_is_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "run-dataset.parquet"
    pd.DataFrame({"run_seconds": [60.0], "request_json": ["{}"], "group": ["g"]}).to_parquet(path)
    DAMAGES[damage](path)
    with pytest.raises(InputFileError) as caught:
        read_run_targets(path)
    assert str(path) in str(caught.value) and "run dataset" in str(caught.value)
