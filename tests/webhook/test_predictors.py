"""The prior's physics and the trained pipeline, including its data-only artifact and fallback."""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest

from webhook.model.features import FEATURE_VERSION, PodFeatureEncoder, physics_width
from webhook.model.artifact import ArtifactError, build_pipeline, load_model, save_model
from webhook.model.prior import (FIRST_PRIOR, PHYSICS_COLUMNS, PRIOR_MODEL_ID, SECOND_PRIOR, PriorCoefficients,
                                 PriorPredictor)
from webhook.model.schema import ContainerSpec, InferenceRequest


def _request(cpu_millicores: int | None, memory_mib: float | None, image: str = "nginx:1.27", gpus: float = 0,
             kind: str = "Deployment", limit_cpu: int | None = None) -> InferenceRequest:
    extended = {"nvidia.com/gpu": gpus} if gpus else {}
    return InferenceRequest(
        workload_kind=kind,  # type: ignore[arg-type]
        workload_name="w",
        containers=[ContainerSpec(name="c", image=image, req_cpu_mcpu=cpu_millicores, req_mem_mib=memory_mib,
                                  lim_cpu_mcpu=limit_cpu)],
        gpu_count=gpus,
        extended_resources=extended,
    )


def test_prior_follows_the_ccf_formula() -> None:
    prior = PriorPredictor()
    prediction = prior.predict_one(_request(2000, 4096))
    expected = 2 * (0.74 + 0.1 * (3.5 - 0.74)) + 4096 * 2**20 / 1e9 * 0.392
    assert prediction.power_watts == pytest.approx(expected)
    assert prediction.power_watts_p10 < prediction.power_watts < prediction.power_watts_p90
    assert prediction.basis == "prior" and prediction.model_id == PRIOR_MODEL_ID


def test_prior_uses_limits_for_p90_and_defaults_without_requests() -> None:
    prior = PriorPredictor(PriorCoefficients(pue=1.5))
    bursting = prior.predict_one(_request(500, 256, limit_cpu=4000))
    steady = prior.predict_one(_request(500, 256))
    assert bursting.power_watts == pytest.approx(steady.power_watts)
    assert bursting.power_watts_p90 > 3 * steady.power_watts_p90
    unspecified = prior.predict_one(_request(None, None))
    explicit_default = prior.predict_one(_request(100, 128))
    assert unspecified.power_watts == pytest.approx(explicit_default.power_watts)


def test_prior_sees_gpus_and_their_product() -> None:
    prior = PriorPredictor()
    assert prior.predict_one(_request(1000, 1024, gpus=2)).power_watts > 300
    b200 = _request(1000, 1024, gpus=1).model_copy(update={"gpu_product": "B200"})
    t4 = _request(1000, 1024, gpus=1).model_copy(update={"gpu_product": "T4"})
    cpu_and_memory = prior.predict_one(_request(1000, 1024)).power_watts
    assert prior.predict_one(b200).power_watts - cpu_and_memory == pytest.approx(140 + 0.5 * (1000 - 140))
    assert prior.predict_one(t4).power_watts - cpu_and_memory == pytest.approx(10 + 0.5 * (70 - 10))
    first = PriorPredictor(PriorCoefficients(gpu_products=False))
    assert first.model_id == "ccf-prior-v1"
    assert first.predict_one(b200).power_watts == pytest.approx(first.predict_one(t4).power_watts)


def test_the_embedded_prior_takes_a_tenth_of_the_requested_cpu_and_half_of_a_gpu() -> None:
    """v3 differs from v2 in the CPU's utilisation only (10% against CCF's 50%); its GPUs are v2's."""
    embedded, second = PriorPredictor(), PriorPredictor(SECOND_PRIOR)
    assert (embedded.model_id, second.model_id, PriorPredictor(FIRST_PRIOR).model_id) == (
        "ccf-prior-v3", "ccf-prior-v2", "ccf-prior-v1")
    cpu_only = _request(1000, 1024)
    memory_watts = 1024 * 2**20 / 1e9 * 0.392
    assert embedded.predict_one(cpu_only).power_watts == pytest.approx(0.74 + 0.1 * (3.5 - 0.74) + memory_watts)
    assert second.predict_one(cpu_only).power_watts == pytest.approx(0.74 + 0.5 * (3.5 - 0.74) + memory_watts)
    b200 = _request(1000, 1024, gpus=1).model_copy(update={"gpu_product": "B200"})
    for prior in (embedded, second):
        assert prior.predict_one(b200).power_watts - prior.predict_one(cpu_only).power_watts == pytest.approx(
            140 + 0.5 * (1000 - 140))
    # A user's own CPU utilisation is v3's formula; CCF's 50% is v2's.
    assert PriorPredictor(PriorCoefficients(utilisation=0.3)).model_id == "ccf-prior-v3"
    assert PriorPredictor(PriorCoefficients(utilisation=0.5, utilisation_p10=0.1)).model_id == "ccf-prior-v2"


@pytest.mark.parametrize("bad", [{"utilisation": 1.5}, {"cpu_min_watts_per_vcpu": -1}, {"pue": float("nan")},
                                 {"cpu_min_watts_per_vcpu": 5.0, "cpu_max_watts_per_vcpu": 1.0},
                                 {"gpu_utilisation": 1.5}, {"gpu_utilisation_p10": 0.6},
                                 {"utilisation": 0.01}])
def test_prior_rejects_bad_coefficients(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        PriorCoefficients(**bad)


def _training_set(rows: int = 300, seed: int = 7) -> tuple[list[InferenceRequest], np.ndarray]:
    # A made-up world where power follows CPU request with a per-image efficiency: enough
    # structure to tell a working model from a constant one.
    rng = random.Random(seed)
    images = {"nginx:1.27": 1.0, "postgres:16": 2.5, "python:3.12": 1.6}
    requests, power = [], []
    for _ in range(rows):
        image = rng.choice(list(images))
        cpu = rng.choice([100, 250, 500, 1000, 2000, 4000])
        requests.append(_request(cpu, rng.choice([128, 512, 2048]), image=image))
        power.append(images[image] * cpu / 1000 * 3.0 * math.exp(rng.gauss(0, 0.05)))
    return requests, np.asarray(power)


@pytest.fixture(scope="module")
def fitted_pipeline():  # type: ignore[no-untyped-def]
    requests, power = _training_set()
    return build_pipeline(n_neighbors=5).fit(requests, power)


def test_features_see_magnitude() -> None:
    requests = [_request(100, 128), _request(64000, 128), _request(110, 128)]
    encoder = PodFeatureEncoder().fit(requests)
    small, huge, near = encoder.transform(requests)
    assert np.linalg.norm(small - huge) > 10 * np.linalg.norm(small - near)


def _host_agent(request: InferenceRequest) -> InferenceRequest:
    """The same pod with what a node agent takes from the node."""
    agent = request.containers[0].model_copy(update={"privileged": True, "capabilities_added": ["NET_ADMIN"]})
    return request.model_copy(update={"containers": [agent], "host_namespaces": ["network", "pid"]})


def test_host_access_words_are_features_and_version_2_encoders_ignore_them() -> None:
    requests = [_request(100, 128), _request(250, 256, image="example/api:2")]
    encoder = PodFeatureEncoder().fit(requests)
    plain, agent = encoder.transform([requests[0], _host_agent(requests[0])])
    assert not np.array_equal(plain, agent)
    assert np.array_equal(plain[:len(PHYSICS_COLUMNS)], agent[:len(PHYSICS_COLUMNS)])  # words only, not physics
    state, arrays = encoder.to_state()
    old = PodFeatureEncoder().set_state({**state, "feature_version": 2}, arrays)
    plain, agent = old.transform([requests[0], _host_agent(requests[0])])
    assert np.array_equal(plain, agent)  # as a version 2 artifact was trained: without those words
    with pytest.raises(ValueError, match="feature_version 1"):
        PodFeatureEncoder().set_state({**state, "feature_version": 1}, arrays)


def _pipeline_of_version(version: int, requests: list[InferenceRequest], power: np.ndarray):  # type: ignore[no-untyped-def]
    """A pipeline fitted as the code of that feature version fitted it: its encoder's layout (before
    version 4, no `runs_to_completion` column) and a KNN told that physics width."""
    from sklearn.pipeline import Pipeline

    from webhook.model.knn import AnchoredKNN

    encoder = PodFeatureEncoder().fit(requests)
    state, arrays = encoder.to_state()
    encoder = PodFeatureEncoder().set_state({**state, "feature_version": version}, arrays)
    knn = AnchoredKNN(n_neighbors=5, physics_columns=physics_width(version)).fit(encoder.transform(requests), power)
    return Pipeline([("features", encoder), ("knn", knn)])


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_artifact_loads_and_encodes_as_it_was_trained(version: int, tmp_path: Path) -> None:
    requests, power = _training_set()
    pipeline = _pipeline_of_version(version, requests, power)
    path = tmp_path / f"v{version}.esmodel"
    save_model(path, pipeline, "m")
    model = load_model(path)
    assert model.pipeline[0].feature_version_ == version
    request = _request(250, 256)
    job = request.model_copy(update={"workload_kind": "Job"})
    encoded = model.pipeline[0].transform([request, job])
    assert encoded.shape[1] == pipeline[-1].n_features_in_ == model.pipeline[-1].n_features_in_
    assert np.array_equal(encoded[0, :physics_width(version)], encoded[1, :physics_width(version)])  # no batch column
    queries = [request, job, _host_agent(request)]
    assert [p.power_watts for p in model.predict(queries)] == list(pipeline.predict(queries))
    if version == 2:  # as it was trained: without the host access words
        assert model.predict([_host_agent(request)])[0].power_watts == model.predict([request])[0].power_watts


def test_the_current_encoder_marks_the_pods_that_run_to_completion(fitted_pipeline) -> None:  # type: ignore[no-untyped-def]
    assert fitted_pipeline[0].feature_version_ == FEATURE_VERSION == 4
    column = PHYSICS_COLUMNS.index("runs_to_completion")
    assert physics_width() == len(PHYSICS_COLUMNS) == fitted_pipeline[-1].physics_columns
    rows = fitted_pipeline[0].transform([_request(250, 256, kind=kind) for kind in ("Deployment", "Job", "CronJob", "Pod")])
    assert rows[:, column].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert fitted_pipeline[0].get_feature_names_out()[column] == "physics:runs_to_completion"


def test_trained_model_tracks_the_data(fitted_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.joblib"
    digest = save_model(path, fitted_pipeline, "test-model-1", {"rows": 300})
    model = load_model(path, expected_sha256=digest)
    small, big, heavy_image = model.predict([
        _request(250, 512, "nginx:1.27"), _request(4000, 512, "nginx:1.27"), _request(250, 512, "postgres:16"),
    ])
    assert {small.basis, big.basis, heavy_image.basis} == {"model"}
    assert small.model_id == "test-model-1"
    assert small.power_watts == pytest.approx(0.75, rel=0.15)
    assert big.power_watts == pytest.approx(12.0, rel=0.15)
    assert heavy_image.power_watts > 2 * small.power_watts
    assert small.power_watts_p10 <= small.power_watts <= small.power_watts_p90


def test_far_from_training_data_falls_back_to_the_prior(fitted_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.joblib"
    save_model(path, fitted_pipeline, "test-model-1")
    model = load_model(path)
    alien = _request(256000, 2**20, image="example.org/gpu/trainer:7", gpus=8, kind="Job")
    hard = build_pipeline(n_neighbors=5, target="log_power").fit(*_training_set())
    save_model(path, hard, "test-model-hard")
    prediction = load_model(path).predict([alien])[0]
    assert prediction.basis == "prior"
    assert "trust radius" in (prediction.fallback_reason or "")
    knn = hard[-1]
    calibrated = knn.prior_.predict(hard[:-1].transform([alien])[:, :knn.physics_columns])[0]
    assert prediction.power_watts == pytest.approx(calibrated, rel=1e-5)
    # Where the model has no neighbours its range is no narrower, relative to the point, than the
    # embedded prior's own (the model's calibrated one is far narrower for this 8-GPU job).
    own = PriorPredictor().predict_one(alien)
    assert prediction.power_watts_p10 / prediction.power_watts == pytest.approx(own.power_watts_p10 / own.power_watts)
    assert prediction.power_watts_p90 / prediction.power_watts == pytest.approx(own.power_watts_p90 / own.power_watts)
    inside = load_model(path).predict([_request(250, 512)])[0]
    assert inside.basis == "model" and inside.power_watts_p90 / inside.power_watts < own.power_watts_p90 / own.power_watts
    # The correction target fades its correction instead: still the model's answer, near the physics.
    faded = model.predict([alien])[0]
    assert faded.basis == "model" and faded.fallback_reason is None


def test_a_fallback_for_a_pod_the_prior_gives_0_w_keeps_the_models_range() -> None:
    from webhook.model.artifact import widened_beyond_trust
    from webhook.model.knn import NeighbourPrediction

    nothing = _request(0, 0, limit_cpu=0)  # asks for no CPU, no memory, no GPU
    # A prior whose default for a container without requests is nothing at all.
    prior = PriorPredictor(PriorCoefficients(default_cpu_millicores=0.0, default_memory_mib=0.0))
    assert prior.predict_one(nothing).power_watts == 0.0
    detail = NeighbourPrediction(power_watts=np.array([0.5]), power_watts_p10=np.array([0.4]),
                                 power_watts_p90=np.array([0.6]), nearest_distance=np.array([9.0]),
                                 beyond_trust=np.array([True]), prior_only=np.array([True]))
    widened = widened_beyond_trust(detail, [nothing], prior)  # no division by the prior's 0 W
    assert widened.power_watts_p10.tolist() == [0.4] and widened.power_watts_p90.tolist() == [0.6]


def test_intervals_come_calibrated_from_fit(fitted_pipeline) -> None:  # type: ignore[no-untyped-def]
    knn = fitted_pipeline[-1]
    low, high = knn.interval_log_offsets_
    features = fitted_pipeline[:-1].transform([_request(500, 512)])
    detail = knn.predict_detail(features)
    assert detail.power_watts_p10[0] == pytest.approx(detail.power_watts[0] * math.exp(low), rel=1e-6)
    assert detail.power_watts_p90[0] == pytest.approx(detail.power_watts[0] * math.exp(high), rel=1e-6)


def _rewritten(good: Path, target: Path, change) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the artifact whose artifact.json went through `change(manifest)`."""
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "artifact.json":
                manifest = json.loads(data)
                change(manifest)
                data = json.dumps(manifest).encode()
            copy.writestr(item, data)
    return target


def test_artifact_faults_are_named(fitted_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "absent.esmodel")
    good = tmp_path / "model.esmodel"
    save_model(good, fitted_pipeline, "m")
    truncated = tmp_path / "truncated.esmodel"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_model(truncated)
    other = tmp_path / "other.json"
    other.write_text('{"weights": [1, 2, 3]}')
    with pytest.raises(ArtifactError, match="not an EnergetiScope model"):
        load_model(other)
    future = _rewritten(good, tmp_path / "future.esmodel", lambda m: m.update(feature_version=FEATURE_VERSION + 1))
    with pytest.raises(ArtifactError, match="feature version"):
        load_model(future)
    foreign = _rewritten(good, tmp_path / "foreign.esmodel", lambda m: m["steps"][1].update({"class": "Popen"}))
    with pytest.raises(ArtifactError, match="does not build"):
        load_model(foreign)
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(good, expected_sha256="0" * 64)


class _RunsCode:
    """Unpickling this calls `Path.touch(marker)`: what a malicious pickle artifact would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_artifacts_crafted_to_run_code_are_refused_without_running_it(fitted_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "code-ran"
    pickled = tmp_path / "old.joblib"
    pickled.write_bytes(pickle.dumps({"format": "energetiscope.model", "pipeline": _RunsCode(marker)}))
    with pytest.raises(ArtifactError, match="pickle .* refused; retrain"):
        load_model(pickled)
    # An object array is the one way a .npy can carry a pickle: inside a real artifact, it is refused.
    good = tmp_path / "model.esmodel"
    save_model(good, fitted_pipeline, "m")
    evil_array = io.BytesIO()
    np.lib.format.write_array(evil_array, np.array([_RunsCode(marker)], dtype=object), allow_pickle=True)
    evil = tmp_path / "evil.esmodel"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            copy.writestr(item, evil_array.getvalue() if item.filename.endswith("targets.npy") else data)
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_model(evil)
    assert not marker.exists()
    pickle.loads(pickled.read_bytes())  # the payload does run when unpickled: the test could fail
    assert marker.exists()


def test_artifact_round_trip_predicts_identically(fitted_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.joblib"  # the user's file name; the content decides the format
    save_model(path, fitted_pipeline, "m", {"note": "card"})
    loaded = load_model(path)
    queries = [_request(cpu, 512, image) for cpu in (100, 777, 3000) for image in ("nginx:1.27", "redis:7")]
    direct = fitted_pipeline.predict(queries)
    np.testing.assert_allclose([p.power_watts for p in loaded.predict(queries)], direct, rtol=1e-6)
    assert loaded.metadata == {"note": "card"}
    assert zipfile.is_zipfile(path)


def test_a_model_with_local_slopes_and_the_auto_target_round_trips(tmp_path: Path) -> None:
    from webhook.model.features import local_regression_columns, numeric_columns

    requests, power = _training_set()
    pipeline = build_pipeline(n_neighbors=8).set_params(
        knn__target="auto", knn__local_columns=local_regression_columns(), knn__unsearched_columns=numeric_columns(),
        knn__trust_factor=None).fit(requests, power)
    path = tmp_path / "model.esmodel"
    save_model(path, pipeline, "local", {})
    loaded = load_model(path)
    queries = [_request(cpu, 512, image) for cpu in (100, 777, 3000) for image in ("nginx:1.27", "postgres:16")]
    direct = pipeline.predict(queries)
    np.testing.assert_allclose([p.power_watts for p in loaded.predict(queries)], direct, rtol=1e-6)
    # Power here follows the CPU request: the slopes carry a 777 m query between its neighbours' sizes.
    assert direct[2] == pytest.approx(1.0 * 0.777 * 3.0, rel=0.15)  # nginx at 777 m
    assert loaded.pipeline[-1].local_features_.shape == (len(requests), len(local_regression_columns()))


def _sized_training_set() -> tuple[list[InferenceRequest], np.ndarray]:
    """Three images at 250, 500 and 1000 m, twice each, power following the request exactly."""
    images = {"nginx:1.27": 1.0, "postgres:16": 2.5, "python:3.12": 1.6}
    rows = [(image, cpu) for image in images for _ in range(2) for cpu in (250, 500, 1000)]
    return [_request(cpu, 512, image) for image, cpu in rows], np.array([images[i] * cpu / 1000 * 3.0 for i, cpu in rows])


def _sized_pipeline(target: str, **params: object):  # type: ignore[no-untyped-def]
    from webhook.model.features import local_regression_columns, numeric_columns

    return build_pipeline(n_neighbors=5, target=target).set_params(
        knn__local_columns=local_regression_columns(), knn__unsearched_columns=numeric_columns(), knn__trust_factor=None,
        knn__local_alpha=0.01, **params).fit(*_sized_training_set())


def test_local_slopes_stop_at_the_neighbours_and_the_prior_carries_size_beyond_them() -> None:
    query = [_request(4000, 512, "postgres:16")]  # four times the largest training request
    truth, at_the_edge = 2.5 * 4.0 * 3.0, 2.5 * 1.0 * 3.0
    assert _sized_pipeline("log_power").predict(query)[0] == pytest.approx(at_the_edge, rel=0.05)
    # Extrapolating, the line goes on past them (as far as the targets' span bounds the move).
    assert _sized_pipeline("log_power", knn__local_extrapolation=True).predict(query)[0] > 1.5 * at_the_edge
    # Between its neighbours a query still gets the line: 750 m.
    between = [_request(750, 512, "postgres:16")]
    assert _sized_pipeline("log_power").predict(between)[0] == pytest.approx(2.5 * 0.75 * 3.0, rel=0.1)
    # The correction target carries the size beyond them with the calibrated prior's physics.
    assert _sized_pipeline("correction").predict(query)[0] == pytest.approx(truth, rel=0.2)


def test_an_artifact_from_before_the_slopes_stopped_at_the_neighbours_still_extrapolates(tmp_path: Path) -> None:
    pipeline = _sized_pipeline("log_power", knn__local_extrapolation=True)
    path = tmp_path / "new.esmodel"
    save_model(path, pipeline, "m")

    def without_the_parameter(manifest: dict) -> None:  # type: ignore[type-arg]
        assert manifest["steps"][1]["params"].pop("local_extrapolation") is True
    older = load_model(_rewritten(path, tmp_path / "older.esmodel", without_the_parameter))
    assert older.pipeline[-1].local_extrapolation is True
    query = [_request(4000, 512, "postgres:16")]
    assert older.predict(query)[0].power_watts == pytest.approx(pipeline.predict(query)[0], rel=1e-6)
    assert build_pipeline()[-1].local_extrapolation is False  # what a new fit writes

    def as_text(manifest: dict) -> None:  # type: ignore[type-arg]
        manifest["steps"][1]["params"]["local_extrapolation"] = "false"
    with pytest.raises(ArtifactError, match="local_extrapolation must be true or false, got 'false'"):
        load_model(_rewritten(path, tmp_path / "text.esmodel", as_text))


def test_knn_rejects_non_positive_power() -> None:
    requests, power = _training_set(rows=10)
    power[3] = 0.0
    with pytest.raises(ValueError, match="> 0 W"):
        build_pipeline().fit(requests, power)


def test_duplicated_specs_do_not_collapse_the_trust_radius() -> None:
    # Every spec appears three times, as the pods of one Deployment would.
    requests, power = _training_set(rows=60)
    tripled = [r for r in requests for _ in range(3)]
    pipeline = build_pipeline(n_neighbors=3).fit(tripled, np.repeat(power, 3))
    assert pipeline[-1].trust_radius_ > 0
    from webhook.model.artifact import TrainedModel

    near = _request(300, 512, "nginx:1.27")  # between training specs, never seen exactly
    assert TrainedModel(pipeline, "m").predict([near])[0].basis == "model"


def test_prediction_cache_is_bounded_and_keyed_by_model() -> None:
    from webhook.model.service import PredictionService

    service = PredictionService(PriorPredictor(), cache_entries=8)
    service.load()
    for cpu in range(100, 100 + 50):
        service.predict(_request(cpu, 128))
    assert len(service.cache) == 8
    hits = service.cache.hits
    service.predict(_request(149, 128))  # the most recent spec is still cached
    assert service.cache.hits == hits + 1
    service.predict(_request(100, 128))  # the oldest was evicted
    assert service.cache.hits == hits + 1


def _maps_a_file(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base  # type: ignore[assignment]
    return False


def test_large_arrays_are_mapped_in_place_aligned_and_survive_the_file_being_replaced(tmp_path: Path) -> None:
    import os

    rng = np.random.default_rng(4)
    images = ("nginx:1.27", "redis:7", "postgres:16", "registry.example.com/shop/api:1", "busybox:1.36")
    # Many image words, so that most hashed token columns vary and the training rows pass 1 MiB.
    requests = [_request(int(rng.integers(10, 4000)), float(rng.integers(16, 8192)),
                         f"registry.example.com/team{i % 53}/service{i % 97}-{images[i % 5].split(':')[0]}:1")
                for i in range(3000)]
    power = np.array([0.05 + r.containers[0].req_cpu_mcpu / 1000 * 3.0 for r in requests])
    pipeline = build_pipeline(n_neighbors=5).set_params(knn__interval_folds=0).fit(requests, power)
    assert pipeline[-1].training_features_.nbytes > 1 << 20  # large enough to be mapped
    path = tmp_path / "model.esmodel"
    save_model(path, pipeline, "big", {})
    loaded = load_model(path)
    features = loaded.pipeline[-1].training_features_
    assert _maps_a_file(features) and not features.flags.writeable
    assert features.ctypes.data % 64 == 0 and features.flags.f_contiguous  # brute force searches columns in place
    assert not _maps_a_file(loaded.pipeline[-1].column_weights_)  # a small array is read
    queries = [_request(cpu, 512, image) for cpu in (100, 777, 3000) for image in images]
    before = [p.power_watts for p in loaded.predict(queries)]
    np.testing.assert_allclose(before, pipeline.predict(queries), rtol=1e-6)
    # A reload's new model replaces the file by rename: the loaded one keeps reading the file it mapped.
    other = build_pipeline(n_neighbors=5).set_params(knn__interval_folds=0).fit(requests, power * 10)
    save_model(tmp_path / "next.esmodel", other, "next", {})
    os.replace(tmp_path / "next.esmodel", path)
    assert [p.power_watts for p in loaded.predict(queries)] == before
    np.testing.assert_allclose([p.power_watts for p in load_model(path).predict(queries)], other.predict(queries), rtol=1e-6)
    assert load_model(path).predict(queries)[0].power_watts > 5 * before[0]
