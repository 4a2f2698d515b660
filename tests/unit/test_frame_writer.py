"""Unit tests of the store's chunked frame writer: checked in threads, hashed
while written, refused as a whole when a contract breaks across chunks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_contracts import ContractViolation
from tasks.infra.store import ArtifactStore, HashingFile, sha256_file


def features_chunk(start: int, rows: int, dim: int = 4) -> pd.DataFrame:
    """Rows ``start``.. of a frame in the features contract."""
    rng = np.random.default_rng(start)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    frame = pd.DataFrame(
        {
            "tweet_id": [str(i) for i in range(start, start + rows)],
            "split": "discovery",
            "n_known": np.ones(rows, dtype=np.int64),
        }
    ).astype({"tweet_id": "str", "split": "str"})
    return pd.concat(
        [frame, pd.DataFrame({f"f{i:03d}": vectors[:, i] for i in range(dim)})], axis=1
    )


def test_chunks_checked_in_threads_store_the_frame_written_at_once(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    chunks = [features_chunk(start, 500) for start in range(0, 3000, 500)]
    with (
        store.frame_writer("features", "features") as writer,
        ThreadPoolExecutor(2) as pool,
    ):
        for checked in pool.map(writer.check, chunks):
            writer.write(checked)
    threaded = writer.ref
    whole = pd.concat(chunks, ignore_index=True)
    assert threaded.rows == len(whole)
    assert store.get_frame(threaded).equals(whole)
    # The hash computed while writing is the hash of the file on disk.
    assert sha256_file(store.path_of(threaded)) == threaded.sha256


def test_an_id_repeated_in_two_chunks_stores_nothing(tmp_path: Path) -> None:
    """Each chunk is unique on its own; the writer sees the repeat across them."""
    store = ArtifactStore(tmp_path)
    with (
        pytest.raises(ContractViolation, match="field_uniqueness.*'499'"),
        store.frame_writer("features", "features") as writer,
    ):
        writer.write(writer.check(features_chunk(0, 500)))
        writer.write(writer.check(features_chunk(499, 10)))
    assert not (tmp_path / "data").exists()


def test_ids_equal_to_known_unique_ones_are_not_counted_again(
    tmp_path: Path, monkeypatch
) -> None:
    """Written ids equal to a checked frame's, row for row, need no count; any
    other ids are counted, so a repeat is still refused."""
    import pyarrow.compute as pc

    counted: list[int] = []
    count_distinct = pc.count_distinct

    def counting(values, *args, **kwargs):
        if kwargs.get("mode") == "all":  # the uniqueness count, not a sample's
            counted.append(len(values))
        return count_distinct(values, *args, **kwargs)

    monkeypatch.setattr(pc, "count_distinct", counting)
    store = ArtifactStore(tmp_path)
    chunks = [features_chunk(start, 500) for start in range(0, 1500, 500)]
    known = pd.concat(chunks, ignore_index=True)["tweet_id"]
    with store.frame_writer(
        "features", "features", unique_as={"tweet_id": known}
    ) as writer:
        for chunk in chunks:
            writer.write(chunk)
    assert writer.ref.rows == 1500 and counted == []
    # Not the known ids (one row differs): counted, and the repeat refused.
    repeated = [chunks[0], chunks[1], features_chunk(999, 500)]
    with (
        pytest.raises(ContractViolation, match="field_uniqueness.*'999'"),
        store.frame_writer(
            "features", "features", unique_as={"tweet_id": known}
        ) as writer,
    ):
        for chunk in repeated:
            writer.write(chunk)
    assert counted == [1500]


def test_same_values_ignores_chunking_and_string_width() -> None:
    import pyarrow as pa

    from tasks.infra.store import same_values

    ids = pd.Series(["a", "b", "c"], dtype="str")
    wide = pa.large_string()
    split = pa.chunked_array([pa.array(["a"], wide), pa.array(["b", "c"], wide)])
    assert same_values(split, ids)
    assert same_values(pa.array(["a", "b", "c"]), split)
    assert not same_values(split, pd.Series(["a", "c", "b"], dtype="str"))
    assert not same_values(split, pd.Series(["a", "b"], dtype="str"))


def test_a_chunk_checked_against_another_writers_contract_is_refused(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    with store.frame_writer("a") as unchecked:
        with (
            pytest.raises(ValueError, match="another writer"),
            store.frame_writer("features", "features") as writer,
        ):
            writer.write(unchecked.check(features_chunk(0, 3)))
        unchecked.write(features_chunk(0, 3))


def test_hashing_file_hashes_and_syncs_what_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real_sync = os.fdatasync

    def counting_sync(fd: int) -> None:
        synced.append(fd)
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", counting_sync)
    HashingFile.SYNC_EVERY, default = 1000, HashingFile.SYNC_EVERY
    try:
        path = tmp_path / "blob"
        sink = HashingFile(path)
        data = [np.random.default_rng(i).bytes(777) for i in range(50)]
        for piece in data:
            assert sink.write(piece) == len(piece)
        with pytest.raises(RuntimeError, match="still being written"):
            sink.hexdigest()
        sink.close()
    finally:
        HashingFile.SYNC_EVERY = default
    assert path.read_bytes() == b"".join(data)
    assert sink.hexdigest() == sha256_file(path)
    assert len(synced) >= 20  # a sync every second write of 777 bytes (1,000+)


def test_a_large_frame_is_checked_in_chunks_and_stored_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.infra import store as store_module

    monkeypatch.setattr(store_module, "PUT_CHUNK", 400)
    store = ArtifactStore(tmp_path)
    whole = pd.concat(
        [features_chunk(start, 300) for start in range(0, 1500, 300)],
        ignore_index=True,
    )
    ref = store.put_frame(whole, "features", "features")
    assert store.get_frame(ref).equals(whole)
    assert store.open_frame(ref).metadata.num_row_groups == 4
    repeated = whole.assign(tweet_id=whole["tweet_id"].where(whole.index != 1200, "3"))
    with pytest.raises(ContractViolation, match="field_uniqueness.*'3'"):
        store.put_frame(repeated, "features", "features")
    rows = pd.DataFrame(
        {"tweet_id": [f"t{i}" for i in range(900)], "row": [*range(899), 5]}
    ).assign(r000=np.float32(0.5))
    with pytest.raises(ContractViolation, match="column 'row' failed field_uniqueness"):
        store.put_frame(rows, "features", "context_features")


def test_feature_frames_meet_their_contracts_column_by_column(tmp_path: Path) -> None:
    from data_contracts import get_contract, validate_frame
    from tasks.stages.features import context_frame, feature_frame

    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(50, 6)).astype(np.float32)
    tweets = pd.DataFrame(
        {"tweet_id": [f"t{i}" for i in range(50)], "split": "discovery"}
    )
    features = feature_frame(tweets, vectors, np.arange(50))
    replies = context_frame(tweets["tweet_id"][::2], vectors[::2], np.arange(0, 50, 2))
    validate_frame(features, get_contract("features"), "features")
    validate_frame(replies, get_contract("context_features"), "features")
    for frame, prefix, expected in (
        (features, "f", vectors),
        (replies, "r", vectors[::2]),
    ):
        columns = [c for c in frame.columns if c.startswith(prefix) and c[1:].isdigit()]
        assert columns == [f"{prefix}{i:03d}" for i in range(6)]
        for i, name in enumerate(columns):
            column = frame[name].to_numpy()
            assert column.dtype == np.float32
            np.testing.assert_array_equal(column, expected[:, i])
    store = ArtifactStore(tmp_path)
    ref = store.put_frame(features, "features", "features")
    assert store.get_frame(ref).equals(features)
