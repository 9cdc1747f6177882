"""The prototype baseline's text embeddings: TF-IDF always, SBERT only with the optional extra."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.text_embedding import SpecTextEmbedding, default_text_embedding, sbert_missing_reason, spec_text
from webhook.model.schema import ContainerSpec, InferenceRequest

SBERT_MISSING = sbert_missing_reason()


def request(image: str, cpu: int) -> InferenceRequest:
    return InferenceRequest(workload_kind="Deployment", workload_name=image.split(":")[0],
                            containers=[ContainerSpec(name="main", image=image, req_cpu_mcpu=cpu)])


def test_spec_text_is_the_whole_spec_with_sorted_keys() -> None:
    text = spec_text(request("nginx:1.27", 250))
    assert '"image": "nginx:1.27"' in text and '"req_cpu_mcpu": 250' in text
    assert text == spec_text(request("nginx:1.27", 250))


def test_tfidf_puts_similar_specs_closer() -> None:
    specs = [request("nginx:1.27", 250), request("nginx:1.26", 250), request("postgres:16", 2000)]
    vectors = SpecTextEmbedding("tfidf").fit(specs).transform(specs).toarray()
    cosine = vectors @ vectors.T  # rows are L2-normalised
    assert cosine[0, 1] > cosine[0, 2]


def test_the_default_embedding_says_which_one_it_is() -> None:
    assert default_text_embedding() == ("tfidf" if SBERT_MISSING else "sbert")
    with pytest.raises(ValueError):
        SpecTextEmbedding("word2vec")


@pytest.mark.sbert
@pytest.mark.skipif(SBERT_MISSING is not None, reason=f"SBERT test needs the sbert extra: {SBERT_MISSING}")
def test_sbert_embeds_offline_from_the_packaged_model() -> None:
    specs = [request("nginx:1.27", 250), request("nginx:1.26", 250), request("postgres:16", 2000)]
    vectors = SpecTextEmbedding("sbert").fit(specs).transform(specs)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
