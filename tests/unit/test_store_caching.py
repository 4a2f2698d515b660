"""Unit tests of the artifact store, manifests, cache keys and retry rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.infra.caching import TransientStorageError, is_transient
from tasks.infra.store import ArtifactMissing, ArtifactStore, verify_manifest
from tasks.ml.embedding import DocumentEmbedder
from tasks.stages.features import FeaturesConfig, fit_embedder


def test_frames_are_content_addressed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    first = store.put_frame(frame, "stage")
    again = store.put_frame(frame.copy(), "stage")
    assert first == again
    assert first.uri.endswith(f"/data/stage/{first.sha256}.parquet")
    assert store.get_frame(first).equals(frame)
    other = store.put_frame(frame.assign(a=[1, 3]), "stage")
    assert other.sha256 != first.sha256


def test_a_frame_that_breaks_its_contract_is_never_stored(tmp_path: Path) -> None:
    from data_contracts import ContractViolation

    store = ArtifactStore(tmp_path)
    bad = pd.DataFrame({"tweet_id": ["1"], "split": ["nowhere"]})
    with pytest.raises(ContractViolation, match="'preparation'"):
        store.put_frame(bad, "preparation", "prepared")
    assert not (tmp_path / "data").exists()


def test_tampered_or_missing_frames_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = store.put_frame(pd.DataFrame({"a": [1]}), "stage")
    path = store.path_of(ref)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(ArtifactMissing, match="sha256"):
        store.get_frame(ref)
    path.unlink()
    with pytest.raises(ArtifactMissing, match="missing"):
        store.get_frame(ref)


def test_directory_artifacts_verify_their_manifest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    staging = store.staging_dir("model")
    (staging / "weights.npy").write_bytes(b"abc")
    ref = store.commit_dir(staging, "model")
    path = store.get_dir(ref)
    assert json.loads((path / "manifest.json").read_text())["files"]
    (path / "weights.npy").write_bytes(b"abd")
    with pytest.raises(ArtifactMissing, match="does not match"):
        verify_manifest(path)
    (path / "weights.npy").write_bytes(b"abc")
    (path / "intruder.pkl").write_bytes(b"x")
    with pytest.raises(ArtifactMissing, match="not in manifest"):
        verify_manifest(path)


def test_transient_errors_are_classified() -> None:
    class ClientError(Exception):
        def __init__(self, code: str, status: int) -> None:
            self.response = {
                "Error": {"Code": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            }

    assert is_transient(TransientStorageError("flaky"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionResetError())
    assert is_transient(ClientError("SlowDown", 503))
    assert is_transient(ClientError("InternalError", 500))
    assert not is_transient(ClientError("NoSuchKey", 404))
    assert not is_transient(ValueError("bad config"))
    assert not is_transient(FileNotFoundError("gone"))


def test_embedder_round_trips_without_pickle(tmp_path: Path) -> None:
    tokens = pd.Series(
        ["flight delayed gate", "claritin allergy sneeze", "flight gate bag"] * 20
    )
    embedder = fit_embedder(tokens, FeaturesConfig(min_count=1, epochs=2), seed=3)
    embedder.save(tmp_path, {"note": "test"})
    loaded = DocumentEmbedder.load(tmp_path)
    assert list(loaded.vocab) == list(embedder.vocab)
    original, _ = embedder.embed(tokens)
    again, n_known = loaded.embed(tokens)
    np.testing.assert_allclose(original, again, atol=1e-6)
    assert (n_known == 3).all()
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


def test_word_vectors_are_reproducible_with_one_worker() -> None:
    tokens = pd.Series(["flight delayed gate bag", "claritin allergy sneeze"] * 30)
    config = FeaturesConfig(min_count=1, epochs=3, workers=1)
    first, _ = fit_embedder(tokens, config, seed=5).embed(tokens)
    second, _ = fit_embedder(tokens, config, seed=5).embed(tokens)
    np.testing.assert_array_equal(first, second)


def test_fasttext_is_a_drop_in_alternative(tmp_path: Path) -> None:
    tokens = pd.Series(["flight delayed gate bag", "claritin allergy sneeze"] * 30)
    embedder = fit_embedder(
        tokens, FeaturesConfig(algorithm="fasttext", min_count=1, epochs=2), seed=1
    )
    embedder.save(tmp_path, {})
    vectors, n_known = DocumentEmbedder.load(tmp_path).embed(tokens)
    assert vectors.shape == (60, 100) and (n_known == 4).sum() == 30


def test_sweep_removes_only_old_leftovers_of_crashed_runs(tmp_path: Path) -> None:
    import os
    import time

    from tasks.infra.store import ArtifactStore

    store = ArtifactStore(tmp_path)
    old_staging = store.staging_dir("features")
    new_staging = store.staging_dir("training")
    old_partial = tmp_path / "runs" / ".20260101T000000Z-dead.partial"
    old_partial.mkdir(parents=True)
    complete = tmp_path / "runs" / "20260101T000000Z-done"
    complete.mkdir()
    day_ago = time.time() - 2 * 24 * 3600
    for path in (old_staging, old_partial, complete):
        os.utime(path, (day_ago, day_ago))
    removed = store.sweep_stale()
    assert sorted(removed) == sorted([str(old_staging), str(old_partial)])
    assert new_staging.is_dir() and complete.is_dir()
    assert not old_staging.exists() and not old_partial.exists()


def test_embedding_in_chunks_gives_the_vectors_embedding_at_once_gives() -> None:
    tokens = pd.Series(
        ["flight delayed gate", "", "claritin allergy sneeze", "zzz", "flight bag"] * 9
    )
    embedder = fit_embedder(
        tokens, FeaturesConfig(min_count=1, epochs=2, workers=1), seed=3
    )
    whole, known = embedder.embed(tokens, chunk=len(tokens))
    pieces, known_pieces = embedder.embed(tokens, chunk=4)
    assert np.array_equal(whole, pieces)  # bit for bit
    assert np.array_equal(known, known_pieces)
    assert (known[1::5] == 0).all() and not whole[1::5].any()


def test_damaged_artifacts_are_found_and_discarded(tmp_path: Path) -> None:
    """What a cached stage rerun checks: files that exist but fail their sha256."""
    from tasks.infra.store import damaged_artifacts, discard

    store = ArtifactStore(tmp_path)
    frame = store.put_frame(pd.DataFrame({"a": [1, 2]}), "stage")
    staging = store.staging_dir("model")
    (staging / "weights.npy").write_bytes(b"abc")
    folder = store.commit_dir(staging, "model")
    from pydantic import BaseModel

    from tasks.infra.store import ArtifactRef

    class StageOutput(BaseModel):
        frame: ArtifactRef
        folder: ArtifactRef

    out = StageOutput(frame=frame, folder=folder)
    assert damaged_artifacts(store, out) == {}
    path = store.path_of(frame)
    path.write_bytes(path.read_bytes()[:5])  # truncated
    (store.path_of(folder) / "weights.npy").write_bytes(b"abd")
    damaged = damaged_artifacts(store, out)
    assert set(damaged) == {frame.uri, folder.uri}
    assert "sha256" in damaged[frame.uri] and "weights.npy" in damaged[folder.uri]
    for uri in damaged:
        discard(store, uri)
    assert not path.exists() and not store.path_of(folder).exists()
    assert damaged_artifacts(store, out) == {}  # missing now: re-made, not damaged
    again = store.put_frame(pd.DataFrame({"a": [1, 2]}), "stage")
    assert again == frame and store.get_frame(again)["a"].tolist() == [1, 2]


def test_an_altered_frozen_set_is_refused(tmp_path: Path) -> None:
    from tasks.infra.errors import RegistryError
    from tasks.release.config import ReleaseConfig
    from tasks.release.frozen import FROZEN_FILE, frozen_evaluation_set

    store = ArtifactStore(tmp_path)
    frozen = tmp_path / FROZEN_FILE
    frozen.parent.mkdir(parents=True)
    pd.DataFrame(
        {"tweet_id": ["1", "2"], "text": ["late flight", "lost bag"]}
    ).to_parquet(frozen, index=False)
    first = frozen_evaluation_set(store, ReleaseConfig(), tmp_path)
    recorded = (tmp_path / (FROZEN_FILE + ".sha256")).read_text().strip()
    assert recorded == first.sha256
    assert frozen_evaluation_set(store, ReleaseConfig(), tmp_path).sha256 == recorded
    pd.DataFrame(
        {"tweet_id": ["1", "2"], "text": ["late flight", "edited"]}
    ).to_parquet(frozen, index=False)
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        frozen_evaluation_set(store, ReleaseConfig(), tmp_path)
