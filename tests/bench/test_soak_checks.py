"""What the soak (bench/soak.py) counts as a failure, and the slope it reports.

The soak's "0 failed requests" means something only if its check refuses what the apiserver
would not count as a prediction: a fail-open answer (allowed, no patch), another review's uid,
a non-200 status. These run the real mutating handler in process; nothing here is timed.
"""

from __future__ import annotations

import json
import math
import uuid

from bench.admission_body import UID_PLACEHOLDER
from bench.soak_load import VARIANT_PLACEHOLDER, check_answer, soak_bodies
from bench.stats import linear_fit
from webhook.admission.mutate import MutationSettings, mutate
from webhook.admission.review import parse_review
from webhook.model.prior import PriorPredictor
from webhook.model.service import PredictionService

from tests.webhook.reviews import review


def _service() -> PredictionService:
    service = PredictionService(PriorPredictor())
    service.load()
    return service


def _answer(service: PredictionService, body: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(mutate(parse_review(body), service, MutationSettings()).review).encode()


def test_a_patched_answer_passes_and_names_its_model_whatever_the_patch_shape() -> None:
    service = _service()
    uid = str(uuid.uuid4())
    # A soak body: the object has annotations already, so the patch adds our keys one by one.
    soak_body = soak_bodies(1)[0].replace(UID_PLACEHOLDER.encode(), uid.encode()).replace(
        VARIANT_PLACEHOLDER.encode(), b"r")
    assert check_answer(200, _answer(service, json.loads(soak_body)), uid) == (service.status().model_id, None)
    # An object without annotations: the patch adds the whole map.
    bare = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
    body = review(bare)
    assert check_answer(200, _answer(service, body), body["request"]["uid"]) == (service.status().model_id, None)


def test_fail_open_answers_other_uids_and_errors_are_failures() -> None:
    service = _service()
    broken = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
              "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx",
                                                               "resources": {"requests": {"cpu": "lots"}}}]}}}}
    body = review(broken)
    uid = body["request"]["uid"]
    failed_open = _answer(service, body)
    assert json.loads(failed_open)["response"]["allowed"] is True  # the apiserver admits it, unannotated
    model_id, problem = check_answer(200, failed_open, uid)
    assert model_id is None and problem is not None and problem.startswith("no patch (failed open)")
    good = review({**broken, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    answer = _answer(service, good)
    assert check_answer(200, answer, str(uuid.uuid4()))[1] == "response uid is not the request's"
    assert check_answer(503, answer, good["request"]["uid"])[1] == "HTTP 503"
    assert check_answer(200, b"<html>", good["request"]["uid"])[1] == "answer is not JSON"


def test_linear_fit_recovers_a_line_and_refuses_a_vertical_one() -> None:
    hours = [0.0, 0.5, 1.0, 1.5]
    fit = linear_fit(hours, [300.0 + 4.0 * h for h in hours])
    assert math.isclose(fit.slope, 4.0) and math.isclose(fit.intercept, 300.0)
    assert fit.slope_standard_error < 1e-9 and fit.points == 4
    assert math.isnan(linear_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).slope)
