"""Sentence embeddings (MiniLM by default) with an in-process cache of encoded texts."""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from personalign.runtime import models


class Embedder:
    """``embed(texts)`` -> L2-normalized float32 array (n, dim); cosine = dot product."""

    def __init__(self, model: str = models.DEFAULT_EMBEDDER, device: str = "cpu",
                 batch_size: int = 64):
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            with models.quiet_loading():
                self._model = SentenceTransformer(str(models.resolve(self.model_name)),
                                                  device=self.device)
        return self._model

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
            if missing:
                vectors = self._load().encode(missing, batch_size=self.batch_size,
                                              normalize_embeddings=True,
                                              convert_to_numpy=True, show_progress_bar=False)
                for text, vec in zip(missing, vectors):
                    self._memo[text] = vec.astype(np.float32)
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.stack([self._memo[t] for t in texts])

    def forget(self, matches) -> int:
        """Drop the remembered vectors of every text for which ``matches(text)`` is true (a
        service forgetting a user's texts); returns how many were dropped."""
        with self._lock:
            gone = [t for t in self._memo if matches(t)]
            for text in gone:
                del self._memo[text]
        return len(gone)

    def similarity(self, queries: Sequence[str], corpus: Sequence[str]) -> np.ndarray:
        """Cosine similarity matrix (len(queries), len(corpus))."""
        return self.embed(queries) @ self.embed(corpus).T
