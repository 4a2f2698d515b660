"""Document embeddings from word vectors, shared by training and batch inference.

A tweet's vector is the weighted mean of its known words' vectors, minus its
projection on the corpus's common components, L2-normalised. Words are looked
up by their Snowball stem when the embedder stems ("cancelled", "canceled" and
"cancel" share one vector), so training and serving see the same terms. It is
computed for a whole column at once as a sparse doc-term matrix times the
weighted word-vector matrix; stemming runs once per distinct word, not per
token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tasks.infra.progress import current

WORD_VECTORS_FILE = "word_vectors.bin"
EMBEDDING_ARRAYS_FILE = "embedding.npz"
EMBEDDING_INFO_FILE = "embedding.json"
EMBED_CHUNK = 100_000  # tweets embedded at a time


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import Stemmer  # PyStemmer: the Snowball algorithms in C

    return Stemmer.Stemmer("english")


def stem_words(words: np.ndarray) -> np.ndarray:
    """The English Snowball stem of each distinct word; @handles stay as they are."""
    words = np.asarray(words, dtype=object)
    out = words.copy()
    plain = np.array(
        [isinstance(w, str) and not w.startswith("@") for w in words], dtype=bool
    )
    if plain.any():
        out[plain] = _stemmer().stemWords(list(words[plain]))
    return out


def _term_columns(words: np.ndarray, vocab: pd.Index, stem: bool) -> np.ndarray:
    """Vocabulary column of each word (-1 when unknown), stemming distinct words."""
    if not stem:
        return vocab.get_indexer(words)
    codes, distinct = pd.factorize(words)
    columns = vocab.get_indexer(stem_words(np.asarray(distinct, dtype=object)))
    return np.where(codes >= 0, columns[codes], -1)


def term_lists(tokens: pd.Series, stem: bool) -> list[list[str]]:
    """Space-joined token strings as lists of terms (stems when ``stem``)."""
    lists = [[w for w in text.split(" ") if w] for text in tokens.tolist()]
    if stem:
        distinct = list({w for terms in lists for w in terms})
        stems = dict(
            zip(distinct, stem_words(np.asarray(distinct, dtype=object)), strict=True)
        )
        lists = [[stems[w] for w in terms] for terms in lists]
    return lists


def split_words(tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Every space-separated word of every row (an empty row gives one empty
    word), and the position of the row it came from."""
    texts = tokens.tolist()
    if not texts:
        return np.array([], dtype=object), np.array([], dtype=np.int64)
    per_row = np.fromiter((t.count(" ") + 1 for t in texts), np.int64, len(texts))
    words = np.array(" ".join(texts).split(" "), dtype=object)
    return words, np.repeat(np.arange(len(texts)), per_row)


def doc_term_matrix(
    tokens: pd.Series, vocab: pd.Index, stem: bool = False, chunk: int = 200_000
) -> sp.csr_matrix:
    """Counts of known vocabulary terms per tweet, as a sparse matrix.

    Rows are split ``chunk`` at a time, so the words of a million tweets are never
    Python strings all at once.
    """
    parts = []
    for start in range(0, max(len(tokens), 1), chunk):
        piece = tokens.iloc[start : start + chunk]
        words, rows = split_words(piece)
        columns = _term_columns(words, vocab, stem)
        known = columns >= 0
        data = np.ones(int(known.sum()), dtype=np.float32)
        parts.append(
            sp.csr_matrix(
                (data, (rows[known], columns[known])), shape=(len(piece), len(vocab))
            )
        )
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


@dataclass
class DocumentEmbedder:
    """Word vectors plus the weights and components that turn them into doc vectors."""

    vocab: pd.Index
    vectors: np.ndarray  # (V, d) float32
    weights: np.ndarray  # (V,) float32, per-term weights
    components: np.ndarray  # (c, d) float32, common components to remove
    stem: bool = False  # vocabulary terms are Snowball stems

    @property
    def dim(self) -> int:
        """Dimensionality of the document vectors."""
        return int(self.vectors.shape[1])

    def embed(
        self, tokens: pd.Series, chunk: int = EMBED_CHUNK
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed space-joined token strings. Returns (vectors, known-word counts).

        ``chunk`` rows at a time: memory stays bounded and the running stage's
        progress moves on (rows are embedded independently, so the result is
        the same as all at once).
        """
        vectors = np.zeros((len(tokens), self.dim), dtype=np.float32)
        n_known = np.zeros(len(tokens), dtype=np.int64)
        progress = current()
        for start in range(0, len(tokens), chunk):
            piece = tokens.iloc[start : start + chunk]
            docs, known = self.weighted_means(piece)
            vectors[start : start + len(piece)] = self._finish(docs, known > 0)
            n_known[start : start + len(piece)] = known
            progress.advance(len(piece))
        return vectors, n_known

    def counts(self, tokens: pd.Series) -> sp.csr_matrix:
        """Counts of the embedder's vocabulary terms per tweet."""
        return doc_term_matrix(tokens, self.vocab, self.stem)

    def weighted_means(self, tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean word vector per tweet (zeros where no word is known)."""
        return self.means_of_counts(self.counts(tokens))

    def means_of_counts(
        self, counts: sp.csr_matrix, weights: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean word vectors of doc-term ``counts`` and known-term counts.

        A term with weight 0 (an addressee handle) is not a known word.
        """
        weights = self.weights if weights is None else weights
        n_known = np.asarray(counts @ (weights > 0)).ravel().astype(np.int64)
        weighted = counts.multiply(weights[np.newaxis, :]).tocsr()
        totals = np.asarray(weighted.sum(axis=1)).ravel()
        docs = np.asarray(weighted @ self.vectors, dtype=np.float64)
        has_words = totals > 0
        docs[has_words] /= totals[has_words, np.newaxis]
        return docs, n_known

    def finish(self, docs: np.ndarray, has_words: np.ndarray) -> np.ndarray:
        """Remove the common components and L2-normalise (zeros stay zeros)."""
        return self._finish(docs, has_words)

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
        from gensim.models import KeyedVectors  # imported when used: ~1 s

        kv = KeyedVectors(vector_size=self.dim, dtype=np.float32)
        kv.add_vectors(list(self.vocab), self.vectors)
        # gensim writes words by descending "count"; a decreasing rank keeps the
        # vocabulary's own order, which the weights array follows.
        kv.allocate_vecattrs(attrs=["count"], types=[np.int64])
        kv.expandos["count"][:] = np.arange(len(self.vocab), 0, -1)
        kv.save_word2vec_format(str(directory / WORD_VECTORS_FILE), binary=True)
        np.savez(
            directory / EMBEDDING_ARRAYS_FILE,
            weights=self.weights,
            components=self.components,
        )
        (directory / EMBEDDING_INFO_FILE).write_text(
            json.dumps({**info, "stem": self.stem}, indent=2, sort_keys=True) + "\n"
        )

    @classmethod
    def load(cls, directory: Path) -> DocumentEmbedder:
        """Load an embedder saved by ``save`` (the caller verifies the manifest)."""
        from gensim.models import KeyedVectors

        kv = KeyedVectors.load_word2vec_format(
            str(directory / WORD_VECTORS_FILE), binary=True
        )
        with np.load(directory / EMBEDDING_ARRAYS_FILE, allow_pickle=False) as arrays:
            weights = arrays["weights"].astype(np.float32)
            components = arrays["components"].astype(np.float32)
        info = json.loads((directory / EMBEDDING_INFO_FILE).read_text())
        return cls(
            vocab=pd.Index(kv.index_to_key),
            vectors=np.asarray(kv.vectors, dtype=np.float32),
            weights=weights,
            components=components,
            stem=bool(info.get("stem", False)),  # bundles older than stemming
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


def vectors_of(features: pd.DataFrame, prefix: str = "f") -> np.ndarray:
    """The f000.. (or r000..) columns of a features frame as a float32 matrix."""
    columns = [c for c in features.columns if c.startswith(prefix) and c[1:].isdigit()]
    return features[columns].to_numpy(dtype=np.float32)
