"""Document embeddings from word vectors, shared by training and batch inference.

A tweet's vector is the SIF-weighted mean of its known words' vectors
(weight a / (a + p(word))), minus its projection on the corpus's common
components, L2-normalised. It is computed for a whole column at once as a
sparse doc-term matrix times the weighted word-vector matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from gensim.models import KeyedVectors

WORD_VECTORS_FILE = "word_vectors.bin"
EMBEDDING_ARRAYS_FILE = "embedding.npz"
EMBEDDING_INFO_FILE = "embedding.json"


def doc_term_matrix(tokens: pd.Series, vocab: pd.Index) -> sp.csr_matrix:
    """Counts of known vocabulary words per tweet, as a sparse matrix."""
    exploded = tokens.reset_index(drop=True).str.split(" ").explode()
    columns = vocab.get_indexer(exploded.to_numpy())
    known = columns >= 0
    rows = exploded.index.to_numpy()[known]
    data = np.ones(int(known.sum()), dtype=np.float32)
    return sp.csr_matrix(
        (data, (rows, columns[known])), shape=(len(tokens), len(vocab))
    )


@dataclass
class DocumentEmbedder:
    """Word vectors plus the weights and components that turn them into doc vectors."""

    vocab: pd.Index
    vectors: np.ndarray  # (V, d) float32
    weights: np.ndarray  # (V,) float32, SIF weights
    components: np.ndarray  # (c, d) float32, common components to remove

    @property
    def dim(self) -> int:
        """Dimensionality of the document vectors."""
        return int(self.vectors.shape[1])

    def embed(self, tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Embed space-joined token strings. Returns (vectors, known-word counts)."""
        docs, n_known = self.weighted_means(tokens)
        return self._finish(docs, n_known > 0), n_known

    def weighted_means(self, tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """SIF-weighted mean word vector per tweet (zeros where no word is known)."""
        counts = doc_term_matrix(tokens, self.vocab)
        n_known = np.asarray(counts.sum(axis=1)).ravel().astype(np.int64)
        weighted = counts.multiply(self.weights[np.newaxis, :]).tocsr()
        totals = np.asarray(weighted.sum(axis=1)).ravel()
        docs = np.asarray(weighted @ self.vectors, dtype=np.float64)
        has_words = totals > 0
        docs[has_words] /= totals[has_words, np.newaxis]
        return docs, n_known

    def _finish(self, docs: np.ndarray, has_words: np.ndarray) -> np.ndarray:
        if len(self.components):
            docs = docs - (docs @ self.components.T) @ self.components
        norms = np.linalg.norm(docs, axis=1)
        ok = has_words & (norms > 0)
        docs[ok] /= norms[ok, np.newaxis]
        docs[~ok] = 0.0
        return docs.astype(np.float32)

    def save(self, directory: Path, info: dict) -> None:
        """Write word vectors (word2vec binary format) and arrays (npz, no pickle)."""
        kv = KeyedVectors(vector_size=self.dim, dtype=np.float32)
        kv.add_vectors(list(self.vocab), self.vectors)
        kv.save_word2vec_format(str(directory / WORD_VECTORS_FILE), binary=True)
        np.savez(
            directory / EMBEDDING_ARRAYS_FILE,
            weights=self.weights,
            components=self.components,
        )
        (directory / EMBEDDING_INFO_FILE).write_text(
            json.dumps(info, indent=2, sort_keys=True) + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> DocumentEmbedder:
        """Load an embedder saved by ``save`` (the caller verifies the manifest)."""
        kv = KeyedVectors.load_word2vec_format(
            str(directory / WORD_VECTORS_FILE), binary=True
        )
        with np.load(directory / EMBEDDING_ARRAYS_FILE, allow_pickle=False) as arrays:
            weights = arrays["weights"].astype(np.float32)
            components = arrays["components"].astype(np.float32)
        return cls(
            vocab=pd.Index(kv.index_to_key),
            vectors=np.asarray(kv.vectors, dtype=np.float32),
            weights=weights,
            components=components,
        )


def sif_weights(counts: np.ndarray, a: float) -> np.ndarray:
    """Smooth inverse frequency weights a / (a + p(w))."""
    p = counts / max(float(counts.sum()), 1.0)
    return (a / (a + p)).astype(np.float32)


def common_components(docs: np.ndarray, n: int) -> np.ndarray:
    """Top ``n`` principal directions (uncentred) of the document vectors."""
    if n <= 0 or len(docs) < 2:
        return np.zeros((0, docs.shape[1]), dtype=np.float32)
    _, _, vt = np.linalg.svd(docs, full_matrices=False)
    return vt[:n].astype(np.float32)
