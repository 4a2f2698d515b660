"""The model bundle: the folder batch inference loads, and the files it holds.

One owner of the format. The clustering and training stages write their model
files under these names, publishing assembles the bundle, serving reads it.
Every file is listed with its sha256 in ``manifest.json``; nothing is unpickled
before its hash matches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tasks.infra.store import manifest_digest, write_manifest
from tasks.ml.embedding import (
    EMBEDDING_ARRAYS_FILE,
    EMBEDDING_INFO_FILE,
    WORD_VECTORS_FILE,
)

FORMAT = 1
MANIFEST_FILE = "manifest.json"
CLASSIFIER_FILE = "classifier.joblib"
CENTROIDS_FILE = "centroids.npy"
CLUSTERS_FILE = "clusters.json"
CATEGORIES_FILE = "categories.json"
PREPROCESSING_FILE = "preprocessing.json"
EMBEDDER_FILES = (WORD_VECTORS_FILE, EMBEDDING_ARRAYS_FILE, EMBEDDING_INFO_FILE)
CLUSTERING_FILES = (CENTROIDS_FILE, CLUSTERS_FILE)
TRAINING_FILES = (CLASSIFIER_FILE,)
# Tweets with no known word get no cluster; the bundle names their bucket.
NO_WORDS_CLUSTER = -1
NO_WORDS_CATEGORY = "unknown (no known words)"


class Category(BaseModel):
    """The name given to one cluster, and where the name came from."""

    model_config = ConfigDict(frozen=True)

    cluster_id: int
    category: str
    origin: Literal["curated", "previous", "terms", "none"]
    is_new: bool
    top_terms: list[str]


def build_bundle(
    target: Path,
    embedder: Path,
    clustering: Path,
    training: Path,
    categories: list[Category],
    preprocessing: dict,
    meta: dict,
) -> str:
    """Assemble a bundle in ``target`` from the stages' verified model folders.

    Returns the bundle's digest (sha256 of its manifest's file map).
    """
    target.mkdir(parents=True)
    for source, names in [
        (embedder, EMBEDDER_FILES),
        (clustering, CLUSTERING_FILES),
        (training, TRAINING_FILES),
    ]:
        for name in names:
            shutil.copy2(source / name, target / name)
    (target / CATEGORIES_FILE).write_text(
        json.dumps([c.model_dump() for c in categories], indent=2) + "\n"
    )
    (target / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2) + "\n")
    return write_manifest(target, {**meta, "format": FORMAT})


def bundle_digest(directory: Path) -> str:
    """A bundle's content digest: sha256 of its manifest's file map."""
    return manifest_digest(json.loads((directory / MANIFEST_FILE).read_text())["files"])


def read_categories(directory: Path) -> dict[int, str]:
    """Cluster id -> category name, from a bundle."""
    return {
        int(c["cluster_id"]): str(c["category"])
        for c in json.loads((directory / CATEGORIES_FILE).read_text())
    }


def read_json(directory: Path, name: str) -> dict:
    """One JSON file of a bundle (manifest, preprocessing settings)."""
    return json.loads((directory / name).read_text())
