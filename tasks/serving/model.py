"""Load a published model bundle (verified against its manifest) and classify tweets.

Nothing is unpickled before every file's sha256 matches ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.infra.errors import ModelVerificationError
from tasks.infra.lazy import np, pd
from tasks.infra.store import ArtifactMissing, verify_manifest
from tasks.ml.bundle import (
    CLASSIFIER_FILE,
    MANIFEST_FILE,
    NO_WORDS_CATEGORY,
    NO_WORDS_CLUSTER,
    PREPROCESSING_FILE,
    read_categories,
    read_json,
)
from tasks.ml.embedding import DocumentEmbedder
from tasks.ml.text import token_lists


@dataclass
class TweetClassifier:
    """Everything needed to turn raw tweet texts into categories."""

    embedder: DocumentEmbedder
    classifier: Any  # a fitted scikit-learn classifier
    categories: dict[int, str]
    preprocessing: dict
    version: str

    @classmethod
    def load(cls, directory: str | Path) -> TweetClassifier:
        """Verify the bundle's manifest, then load it.

        Raises ModelVerificationError (one readable line) when a file is missing,
        unlisted or altered.
        """
        import joblib  # not needed to import this module (the retrain flow does)

        path = Path(directory)
        try:
            verify_manifest(path)
        except ArtifactMissing as exc:
            raise ModelVerificationError(f"refusing model: {exc}") from None
        return cls(
            embedder=DocumentEmbedder.load(path),
            classifier=joblib.load(path / CLASSIFIER_FILE),
            categories=read_categories(path),
            preprocessing=read_json(path, PREPROCESSING_FILE),
            version=str(read_json(path, MANIFEST_FILE).get("run_id", "unknown")),
        )

    def vectors(self, texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Tweet vectors and known-word counts, tokenised as the model was trained."""
        tokens = token_lists(
            texts,
            keep_mentions=self.preprocessing.get("keep_mentions", True),
            remove_stop_words=self.preprocessing.get("remove_stop_words", True),
        )
        return self.embedder.embed(tokens)

    def predict(self, texts: pd.Series) -> pd.DataFrame:
        """Category, cluster id and confidence for each text (index preserved)."""
        vectors, n_known = self.vectors(texts)
        cluster_id = np.full(len(texts), NO_WORDS_CLUSTER, dtype=np.int64)
        confidence = np.zeros(len(texts), dtype=np.float64)
        known = n_known > 0
        if known.any():
            scores = self._scores(vectors[known])
            classes = np.asarray(self.classifier.classes_, dtype=np.int64)
            cluster_id[known] = classes[scores.argmax(axis=1)]
            confidence[known] = scores.max(axis=1)
        return pd.DataFrame(
            {
                "category": pd.Series(cluster_id)
                .map(self.categories)
                .fillna(NO_WORDS_CATEGORY)
                .astype("str")
                .to_numpy(),
                "cluster_id": cluster_id,
                "confidence": confidence,
                "n_known": n_known,
            },
            index=texts.index,
        )

    def _scores(self, vectors: np.ndarray) -> np.ndarray:
        if hasattr(self.classifier, "predict_proba"):
            return self.classifier.predict_proba(vectors)
        decision = np.atleast_2d(self.classifier.decision_function(vectors))
        exp = np.exp(decision - decision.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)
