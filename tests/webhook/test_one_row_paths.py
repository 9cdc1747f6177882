"""The serving path's one-row shortcuts give exactly, to the bit, what the general (batch) code gives.

A cache miss predicts one spec: the encoder, the calibrated prior and the exact re-ranking take
shortcuts for a single row (plain Python numbers instead of 1-row numpy arrays). Each is checked
here against the same function on a batch, whose code is the general one, over generated inputs.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from webhook.model import arrays, llm
from webhook.model.arrays import exact_nearest
from webhook.model.calibration import CalibratedPrior
from webhook.model.features import PodFeatureEncoder
from webhook.model.gpus import GPU_PRODUCTS
from webhook.model.ivf import InvertedFileIndex, fit_lists
from webhook.model.prior import PHYSICS_COLUMNS, PriorCoefficients, physics_row, physics_rows
from webhook.model.schema import ContainerSpec, InferenceRequest

SETTINGS = hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_bits(one: np.ndarray, batch_row: np.ndarray) -> bool:
    return one.dtype == batch_row.dtype and one.shape == batch_row.shape and one.tobytes() == batch_row.tobytes()


# ---- the calibrated prior ------------------------------------------------------------------------

_PRODUCTS = [-1, 0, 3, len(GPU_PRODUCTS) - 1, 99]  # 99: an index no prior has a utilisation for


def _fitted_priors() -> dict[str, CalibratedPrior]:
    rng = np.random.default_rng(0)
    rows = 400
    physics = np.zeros((rows, len(PHYSICS_COLUMNS)))
    physics[:, 0] = rng.uniform(0.05, 8, rows)
    physics[:, 1] = physics[:, 0] * 2
    physics[:, 2] = rng.uniform(0.1, 32, rows)
    physics[:, 3] = physics[:, 2]
    gpus = rng.random(rows) < 0.4
    physics[gpus, 4] = rng.integers(1, 8, gpus.sum())
    products = rng.choice([0, 3, len(GPU_PRODUCTS) - 1], rows)
    physics[:, 5] = np.where(gpus, [GPU_PRODUCTS[p].idle_watts for p in products], 0)
    physics[:, 6] = np.where(gpus, [GPU_PRODUCTS[p].max_watts for p in products], 0)
    physics[:, 7] = np.where(gpus, products, -1)
    power = 5 + 3 * physics[:, 0] + physics[:, 4] * 150 * rng.uniform(0.5, 1.5, rows)
    return {
        "fitted": CalibratedPrior().fit(physics, power),
        "embedded coefficients": CalibratedPrior(fit_coefficients=False).fit(physics, power),
        # The run model's anchor: one column of zeros, a floor fitted on seconds.
        "one column": CalibratedPrior(penalty=0.0).fit(np.zeros((rows, 1)), power),
        # No product column: every GPU is product -1, which gets a utilisation of its own.
        "seven columns": CalibratedPrior().fit(physics[:, :7], power),
    }


PRIORS = _fitted_priors()
_VALUE = st.one_of(st.floats(-10, 2000, allow_nan=False, width=32), st.sampled_from([0.0, -0.0, -1.0, 1e-9]))


@st.composite
def _physics_batches(draw: Any, width: int) -> np.ndarray:
    rows = draw(st.integers(2, 5))
    batch = np.array([[draw(_VALUE) for _ in range(width)] for _ in range(rows)], dtype=np.float32)
    if width == len(PHYSICS_COLUMNS):
        batch[:, 7] = [draw(st.sampled_from(_PRODUCTS)) for _ in range(rows)]
    return batch


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_the_calibrated_prior_on_one_row_is_the_batchs_row(name: str) -> None:
    prior = PRIORS[name]
    assert prior.product_utilisation_ or name != "fitted"  # the fitted one has per-product utilisations

    @SETTINGS
    @given(batch=_physics_batches(prior.n_features_in_))
    def check(batch: np.ndarray) -> None:
        together = prior.predict(batch)
        for i in range(batch.shape[0]):
            assert _same_bits(prior.predict(batch[i:i + 1]), together[i:i + 1])

    check()


def test_the_calibrated_prior_refuses_a_non_finite_row_too() -> None:
    row = np.zeros((1, len(PHYSICS_COLUMNS)), dtype=np.float32)
    row[0, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        PRIORS["fitted"].predict(row)


# ---- the encoder ---------------------------------------------------------------------------------

_WORDS = ["vllm", "serve", "--model", "meta-llama/Llama-3.1-8B-Instruct-FP8", "--tensor-parallel-size", "2",
          "--max-num-seqs", "256", "-m", "Qwen3-30B-A3B", "python", "-c", "train.py", "--epochs=3", "SHARDS=8",
          "/bin/sh", "nginx", "--port", "8080", "--ctx-size", "4096", "ollama"]
_IMAGES = ["nginx:1.27", "registry.example.com/team/api:2.1", "vllm/vllm-openai:v0.9",
           "ghcr.io/huggingface/text-generation-inference:3", "localhost:5000/batch@sha256:ab", "python:3.12-slim", ""]


def _maybe(rng: random.Random, value: Any) -> Any:
    return value if rng.random() < 0.7 else None


def _random_request(rng: random.Random) -> InferenceRequest:
    """A request with what the encoder reads varied: resources, words, LLM flags, classes, run fields."""
    containers = [
        ContainerSpec(
            name=f"c{i}",
            image=rng.choice(_IMAGES),
            command=_maybe(rng, rng.choices(_WORDS, k=rng.randint(0, 4))),
            args=_maybe(rng, rng.choices(_WORDS, k=rng.randint(0, 10))),
            req_cpu_mcpu=_maybe(rng, rng.randint(0, 64_000)),
            lim_cpu_mcpu=_maybe(rng, rng.randint(0, 128_000)),
            req_mem_mib=_maybe(rng, rng.uniform(0, 1e6)),
            lim_mem_mib=_maybe(rng, rng.uniform(0, 1e6)),
        )
        for i in range(rng.randint(1, 3))
    ]
    gpus = rng.choice([0.0, 1.0, 8.0, 3 / 7])
    labels = {key: rng.choice(["web-api", "llm", "x", "batch-etl-v2"])
              for key in ["app", "app.kubernetes.io/name", "team", "component"] if rng.random() < 0.4}
    return InferenceRequest(
        workload_kind=rng.choice(["Deployment", "Job", "CronJob", "Pod"]),
        labels=labels,
        containers=containers,
        init_container_count=rng.randint(0, 2),
        volume_types=rng.choices(["emptyDir", "secret", "configMap"], k=rng.randint(0, 3)),
        runtime_class=rng.choice([None, "nvidia", "gvisor"]),
        gpu_count=gpus,
        extended_resources={"nvidia.com/gpu": gpus} if gpus else {},
        gpu_product=rng.choice([None, "A100-SXM4-80GB", "T4", "an unknown board"]),
        priority_class=rng.choice([None, "high"]),
        completions=_maybe(rng, rng.randint(1, 100)),
        backoff_limit=_maybe(rng, rng.randint(0, 10)),
        active_deadline_seconds=_maybe(rng, rng.randint(1, 86_400)),
        completion_mode=rng.choice([None, "Indexed"]),
    )


_requests = st.integers(0, 2**32 - 1).map(lambda seed: _random_request(random.Random(seed)))


def _encoders() -> dict[str, PodFeatureEncoder]:
    rng = random.Random(0)
    training = [_random_request(rng) for _ in range(40)]
    return {
        "pods": PodFeatureEncoder().fit(training),
        "runs, weighted": PodFeatureEncoder(run_fields=True, numeric_weight=2.0, categorical_weight=0.5,
                                            text_weight=3, text_dimensions=32).fit(training),
    }


ENCODERS = _encoders()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_the_encoder_on_one_request_is_the_batchs_row(name: str) -> None:
    encoder = ENCODERS[name]

    @SETTINGS
    @given(requests=st.lists(_requests, min_size=2, max_size=4))
    def check(requests: list[InferenceRequest]) -> None:
        together = encoder.transform(requests)
        for i, request in enumerate(requests):
            one = encoder.transform([request])
            assert one.flags.c_contiguous and _same_bits(one, together[i:i + 1])

    check()


def test_the_physics_row_is_the_physics_rows_row() -> None:
    rng = random.Random(1)
    requests = [_random_request(rng) for _ in range(30)]
    for coefficients in (PriorCoefficients(), PriorCoefficients(gpu_products=False, default_cpu_millicores=250)):
        rows = physics_rows(requests, coefficients)
        for i, request in enumerate(requests):
            assert _same_bits(np.array([physics_row(request, coefficients)], dtype=np.float64), rows[i:i + 1])


def test_the_encoder_answers_an_array_whatever_scikit_learns_output_setting() -> None:
    import sklearn

    request = _random_request(random.Random(2))
    with sklearn.config_context(transform_output="pandas"):
        assert isinstance(ENCODERS["pods"].transform([request]), np.ndarray)


@SETTINGS
@given(image=st.text(alphabet="abcdeilmnopqrstuvwxyz.-:/", max_size=30) | st.sampled_from(sorted(llm._SERVING_WORDS)))
def test_the_serving_image_pattern_is_any_serving_word_in_the_image(image: str) -> None:
    assert bool(llm._SERVING_IMAGE.search(image)) == any(word in image for word in llm._SERVING_WORDS)


# ---- exact re-ranking and the inverted file --------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**16), duplicates=st.booleans(), k=st.integers(1, 6))
def test_exact_nearest_for_one_query_is_the_batchs_row(seed: int, duplicates: bool, k: int) -> None:
    rng = np.random.default_rng(seed)
    training = rng.integers(0, 3, (40, 6)).astype(np.float32)  # few values: ties between rows
    if duplicates:
        training[20:] = training[:20]
    queries = rng.integers(0, 3, (2, 6)).astype(np.float32)
    candidates = np.stack([rng.permutation(40)[:12], rng.permutation(40)[:12]])
    distances, indices = exact_nearest(training, queries, candidates, k)
    one_distances, one_indices = exact_nearest(training, queries[:1], candidates[:1], k)
    assert _same_bits(one_distances, distances[:1]) and _same_bits(one_indices, indices[:1])


@pytest.mark.parametrize("block_bytes", [1, 3 * 12 * 6 * 8, 10**9])
def test_exact_nearest_in_blocks_of_queries_is_the_whole_batchs_answer(
        block_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # One query a block, three with a remainder, all at once: the same neighbours to the bit.
    rng = np.random.default_rng(11)
    training = rng.integers(0, 3, (40, 6)).astype(np.float32)
    queries = rng.integers(0, 3, (10, 6)).astype(np.float32)
    candidates = np.stack([rng.permutation(40)[:12] for _ in range(10)])
    expected = [np.empty((10, 4)), np.empty((10, 4), dtype=candidates.dtype)]
    for row in range(10):
        expected[0][row], expected[1][row] = (part[0] for part in
                                              exact_nearest(training, queries[row:row + 1], candidates[row:row + 1], 4))
    monkeypatch.setattr(arrays, "EXACT_BLOCK_BYTES", block_bytes)
    distances, indices = exact_nearest(training, queries, candidates, 4)
    assert _same_bits(distances, expected[0]) and _same_bits(indices, expected[1])


def test_the_inverted_file_answers_one_query_as_it_answers_it_in_a_batch() -> None:
    rng = np.random.default_rng(3)
    training = np.repeat(rng.normal(size=(300, 8)).astype(np.float32), 2, axis=0)  # duplicated rows: ties
    lists = fit_lists(training, lists=20)
    index = InvertedFileIndex(training[lists.order], lists.centroids, lists.offsets, probes=3)
    queries = np.concatenate([training[:40] + 0.01, rng.normal(size=(40, 8)).astype(np.float32)])
    distances, indices = index.kneighbors(queries, 5)
    for q in range(queries.shape[0]):
        one_distances, one_indices = index.kneighbors(queries[q:q + 1], 5)
        assert _same_bits(one_distances, distances[q:q + 1]) and _same_bits(one_indices, indices[q:q + 1])


# ---- the anchored KNN ----------------------------------------------------------------------------

_KNN_CONFIGURATIONS = {
    "correction, calibrated intervals": dict(target="correction", interval_folds=3),
    "correction, neighbours' spread, hard stop": dict(target="correction", interval_folds=0, correction_decay=0.0),
    "log power": dict(target="log_power", interval_folds=0),
    # Local columns as offsets past the physics block (the test adds its width).
    "auto, local columns, correlation weights": dict(target="auto", interval_folds=3, local_columns=(0, 1),
                                                     column_weighting="correlation"),
    "auto, neighbours' spread, local columns": dict(target="auto", interval_folds=0, local_columns=(0, 2)),
    "constant anchor, inverted file": dict(anchor="constant", algorithm="ivf", interval_folds=0),
}


@pytest.mark.parametrize("name", _KNN_CONFIGURATIONS)
def test_the_anchored_knn_on_one_row_is_the_batchs_row(name: str) -> None:
    """`predict_detail` of one row (the prior's one-row formula, no neighbours' spread when offsets
    are calibrated, no weight picking without an exact match) against the batch, for each target."""
    from webhook.model.knn import AnchoredKNN

    rng = np.random.default_rng(5)
    rows, physics = 300, len(PHYSICS_COLUMNS)
    X = np.zeros((rows, physics + 5), dtype=np.float32)
    X[:, 0] = rng.uniform(0.1, 4, rows)
    X[:, 2] = rng.uniform(0.1, 8, rows)
    X[:, 7] = -1
    X[:, 8] = rng.integers(0, 2, rows)  # runs_to_completion: a batch pod's W per vCPU is fitted apart
    X[:, physics:physics + 4] = rng.integers(0, 4, (rows, 4))
    X[:, physics + 4] = 1.0  # constant over the training rows: searched apart
    X[150:] = X[:150]  # duplicated specs: exact matches and ties
    power = 3 + 2 * X[:, 0] + X[:, physics] * rng.uniform(0.5, 2, rows)
    configuration = dict(_KNN_CONFIGURATIONS[name])
    if "local_columns" in configuration:
        configuration["local_columns"] = tuple(physics + c for c in configuration["local_columns"])
    knn = AnchoredKNN(n_neighbors=4, physics_columns=physics, trust_factor=0.5, **configuration)
    knn.fit(X, power)
    queries = np.concatenate([X[:20], X[20:40] + np.float32(0.3), rng.normal(0, 3, (20, X.shape[1])).astype(np.float32)])
    queries[40:, 7] = -1
    batch = knn.predict_detail(queries)
    assert batch.beyond_trust.any() and not batch.beyond_trust.all()  # both sides of the radius
    for q in range(queries.shape[0]):
        one = knn.predict_detail(queries[q:q + 1])
        for field in ("power_watts", "power_watts_p10", "power_watts_p90", "nearest_distance", "beyond_trust",
                      "prior_only"):
            assert _same_bits(getattr(one, field), getattr(batch, field)[q:q + 1]), (q, field)
