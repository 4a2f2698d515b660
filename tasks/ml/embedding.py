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
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.infra.lazy import np, pa, pc, pd
from tasks.infra.progress import current
from tasks.ml.arrow import arrow_strings

if TYPE_CHECKING:
    from typing import TypeAlias

    import pandas
    import pyarrow
    import scipy.sparse as sp

    # Tokens of each tweet: space-joined strings, or Arrow lists (``token_lists``).
    Tokens: TypeAlias = pandas.Series | pyarrow.LargeListArray

WORD_VECTORS_FILE = "word_vectors.bin"
EMBEDDING_ARRAYS_FILE = "embedding.npz"
EMBEDDING_INFO_FILE = "embedding.json"
EMBED_CHUNK = 100_000  # tweets embedded at a time


_LOCAL = threading.local()


def _stemmer() -> Any:
    """This thread's Snowball stemmer (a stemmer object is not thread-safe)."""
    stemmer = getattr(_LOCAL, "stemmer", None)
    if stemmer is None:
        import Stemmer  # PyStemmer: the Snowball algorithms in C

        stemmer = _LOCAL.stemmer = Stemmer.Stemmer("english")
    return stemmer


class _StemCache:
    """Words already stemmed and their stems, shared by every thread.

    The chunks of a million tweets share most of their words: each word is
    stemmed once, not once per chunk, and looked up in a hashed index.
    """

    LIMIT = 2_000_000  # words; forgotten all at once beyond this

    def __init__(self) -> None:
        self.words: pd.Index | None = None  # made on first use (no pandas on import)
        self.stems: Any = None
        self.lock = threading.Lock()

    def stems_of(self, words: np.ndarray) -> np.ndarray:
        """The stem of each word, stemming only words never seen (under the lock:
        the stemmer holds the interpreter anyway)."""
        with self.lock:
            if self.words is None or len(self.words) + len(words) > self.LIMIT:
                self.words = pd.Index([], dtype=object)
                self.stems = np.array([], dtype=object)
            new = pd.unique(words[self.words.get_indexer(words) < 0])
            if len(new):
                stems = np.asarray(_stemmer().stemWords(list(new)), dtype=object)
                self.words = self.words.append(pd.Index(new, dtype=object))
                self.stems = np.concatenate([self.stems, stems])
            return self.stems[self.words.get_indexer(words)]


_STEM_CACHE = _StemCache()


def stem_words(words: np.ndarray) -> np.ndarray:
    """The English Snowball stem of each distinct word; @handles stay as they are."""
    words = np.asarray(words, dtype=object)
    out = words.copy()
    if not len(words):
        return out
    plain = np.array(
        [isinstance(w, str) and not w.startswith("@") for w in words], dtype=bool
    )
    if plain.any():
        out[plain] = _STEM_CACHE.stems_of(words[plain])
    return out


@dataclass(frozen=True)
class WordCodes:
    """The words of a column of space-joined tokens, each as a code into its
    distinct words (in order of first use); row ``i`` holds the words
    ``codes[offsets[i]:offsets[i + 1]]``. An empty row holds one empty word."""

    codes: np.ndarray
    distinct: np.ndarray  # object array of str
    offsets: np.ndarray

    @property
    def rows(self) -> int:
        """Number of rows split."""
        return len(self.offsets) - 1


def word_codes(tokens: pd.Series) -> WordCodes:
    """Split every row on spaces in Arrow: no Python string per word, only per
    distinct word."""
    return list_codes(pc.split_pattern(pc.fill_null(arrow_strings(tokens), ""), " "))


def list_codes(lists: pa.LargeListArray) -> WordCodes:
    """``word_codes`` of tokens already split into lists (an empty list holds
    no word; ``word_codes`` gives an empty row one empty word)."""
    offsets = lists.offsets.to_numpy()
    encoded = pc.dictionary_encode(lists.flatten())
    return WordCodes(
        codes=encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        distinct=np.asarray(encoded.dictionary.to_pylist(), dtype=object),
        offsets=offsets - offsets[0],
    )


def _rows(tokens: Tokens, start: int, size: int) -> Tokens:
    if isinstance(tokens, pa.Array):
        return tokens.slice(start, size)
    return tokens.iloc[start : start + size]


def _term_columns(words: np.ndarray, vocab: pd.Index, stem: bool) -> np.ndarray:
    """Vocabulary column of each distinct word (-1 when unknown)."""
    return vocab.get_indexer(stem_words(words) if stem else words)


def term_lists(tokens: pd.Series, stem: bool) -> list[list[str]]:
    """Space-joined token strings as lists of terms (stems when ``stem``)."""
    if not len(tokens):
        return []
    split = word_codes(tokens)
    terms = stem_words(split.distinct) if stem else split.distinct
    keep = split.distinct[split.codes] != ""
    row = np.repeat(np.arange(split.rows), np.diff(split.offsets))
    per_row = np.bincount(row[keep], minlength=split.rows)
    words = pa.array(terms, pa.large_string()).take(pa.array(split.codes[keep]))
    offsets = pa.array(np.r_[0, np.cumsum(per_row)], pa.int64())
    return pa.LargeListArray.from_arrays(offsets, words).to_pylist()


def doc_term_matrix(
    tokens: Tokens, vocab: pd.Index, stem: bool = False, chunk: int = 200_000
) -> sp.csr_matrix:
    """Counts of known vocabulary terms per tweet, as a sparse matrix.

    Rows are split ``chunk`` at a time in Arrow (``word_codes``): only distinct
    words become Python strings, and each is stemmed once per chunk.
    """
    import scipy.sparse as sp  # not needed to import this module

    parts = []
    for start in range(0, max(len(tokens), 1), chunk):
        piece = _rows(tokens, start, chunk)
        if not len(piece):
            parts.append(sp.csr_matrix((0, len(vocab)), dtype=np.float32))
            continue
        split = list_codes(piece) if isinstance(piece, pa.Array) else word_codes(piece)
        columns = _term_columns(split.distinct, vocab, stem)[split.codes]
        known = columns >= 0
        indptr = np.r_[0, np.cumsum(known)][split.offsets]
        matrix = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.float32), columns[known], indptr),
            shape=(len(piece), len(vocab)),
        )
        matrix.sum_duplicates()
        parts.append(matrix)
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
        self, tokens: Tokens, chunk: int = EMBED_CHUNK, report: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed each tweet's tokens (space-joined strings or Arrow lists).
        Returns (vectors, known-word counts).

        ``chunk`` rows at a time: memory stays bounded (rows are embedded
        independently, so the result is the same as all at once). With
        ``report``, each chunk advances the running stage's progress by its rows
        (a caller that counts its own rows leaves it off).
        """
        vectors = np.zeros((len(tokens), self.dim), dtype=np.float32)
        n_known = np.zeros(len(tokens), dtype=np.int64)
        progress = current() if report else None
        for start in range(0, len(tokens), chunk):
            piece = _rows(tokens, start, chunk)
            docs, known = self.weighted_means(piece)
            vectors[start : start + len(piece)] = self._finish(docs, known > 0)
            n_known[start : start + len(piece)] = known
            if progress is not None:
                progress.advance(len(piece))
        return vectors, n_known

    def counts(self, tokens: Tokens) -> sp.csr_matrix:
        """Counts of the embedder's vocabulary terms per tweet."""
        return doc_term_matrix(tokens, self.vocab, self.stem)

    def weighted_means(self, tokens: Tokens) -> tuple[np.ndarray, np.ndarray]:
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
        weighted = counts.tocsr(copy=True)
        weighted.data = weighted.data * weights[weighted.indices]
        totals = np.asarray(weighted.sum(axis=1)).ravel()
        docs = np.asarray(weighted @ self.vectors, dtype=np.float64)
        has_words = totals > 0
        np.divide(docs, totals[:, np.newaxis], out=docs, where=has_words[:, None])
        return docs, n_known

    def finish(self, docs: np.ndarray, has_words: np.ndarray) -> np.ndarray:
        """Remove the common components and L2-normalise (zeros stay zeros)."""
        return self._finish(docs, has_words)

    def _finish(self, docs: np.ndarray, has_words: np.ndarray) -> np.ndarray:
        if len(self.components):
            docs = docs - (docs @ self.components.T) @ self.components
        norms = np.linalg.norm(docs, axis=1)
        ok = has_words & (norms > 0)
        out = np.zeros(docs.shape, dtype=np.float32)
        np.divide(docs, norms[:, np.newaxis], out=out, where=ok[:, np.newaxis])
        return out

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
        words, vectors = read_word2vec_binary(directory / WORD_VECTORS_FILE)
        with np.load(directory / EMBEDDING_ARRAYS_FILE, allow_pickle=False) as arrays:
            weights = arrays["weights"].astype(np.float32)
            components = arrays["components"].astype(np.float32)
        info = json.loads((directory / EMBEDDING_INFO_FILE).read_text())
        return cls(
            vocab=pd.Index(words),
            vectors=vectors,
            weights=weights,
            components=components,
            stem=bool(info.get("stem", False)),  # bundles older than stemming
        )


def read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    """The words and float32 vectors of a word2vec binary file, as gensim's
    ``save_word2vec_format(binary=True)`` writes it: a ``"<words> <dims>"``
    line, then each word, a space and its vector's bytes. Read without gensim,
    whose import (scipy.stats with it) took longer than loading the model."""
    data = path.read_bytes()
    try:
        end = data.index(b"\n")
        n_words, dims = (int(x) for x in data[:end].split())
    except ValueError:
        raise ValueError(f"{path.name}: no word2vec header") from None
    size = dims * 4
    words: list[str] = []
    vectors = np.empty((n_words, dims), dtype=np.float32)
    position = end + 1
    for row in range(n_words):
        space = data.find(b" ", position)
        if space < 0 or space + 1 + size > len(data):
            raise ValueError(f"{path.name}: ends after {row} of {n_words} words")
        # Some writers put a newline before each word; gensim strips it too.
        words.append(data[position:space].decode("utf-8").lstrip("\n"))
        vectors[row] = np.frombuffer(data, "<f4", dims, space + 1)
        position = space + 1 + size
    if data[position:].strip():
        raise ValueError(f"{path.name}: data after its {n_words} words")
    return words, vectors


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


def vector_columns(names: Iterable[str], prefix: str = "f") -> list[str]:
    """The vector columns (f000.., or r000.. for reply views) among ``names``."""
    return [c for c in names if c.startswith(prefix) and c[1:].isdigit()]


def vectors_of(features: pd.DataFrame, prefix: str = "f") -> np.ndarray:
    """The f000.. (or r000..) columns of a features frame as a float32 matrix."""
    return features[vector_columns(features.columns, prefix)].to_numpy(dtype=np.float32)


def vectors_of_batch(batch: Any, prefix: str = "f") -> np.ndarray:
    """The f000.. (or r000..) columns of an Arrow record batch of a features frame
    as a float32 matrix, column-major: each column is copied once, contiguously
    (no pandas frame in between, no strided writes)."""
    columns = vector_columns(batch.schema.names, prefix)
    by_column = np.empty((len(columns), batch.num_rows), dtype=np.float32)
    for j, name in enumerate(columns):
        by_column[j] = batch.column(name).to_numpy(zero_copy_only=False)
    return by_column.T
