"""Predictions as a partitioned Parquet dataset: parts written whole, the
manifest last, nothing of an earlier dataset or of a failed run left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.serving.inference import (
    DatasetWriter,
    OutputError,
    check_output,
    prediction_writer,
    quarantine_uri,
)


def predictions(ids: range, category: str = "Apple") -> pd.DataFrame:
    """A predictions chunk with the contract's columns and dtypes."""
    n = len(ids)
    return pd.DataFrame(
        {
            "tweet_id": pd.Series([str(i) for i in ids], dtype="str"),
            "text": pd.Series([f"text {i}" for i in ids], dtype="str"),
            "category": pd.Series([category] * n, dtype="str"),
            "cluster_id": np.zeros(n, dtype="int64"),
            "confidence": np.full(n, 0.9),
            "model_version": pd.Series(["tweetflow-classifier/1"] * n, dtype="str"),
        }
    )


def test_a_folder_output_is_a_dataset_and_anything_else_must_be_a_parquet_file(
    tmp_path: Path,
) -> None:
    assert isinstance(prediction_writer(f"{tmp_path}/out/"), DatasetWriter)
    assert not isinstance(prediction_writer(f"{tmp_path}/out.parquet"), DatasetWriter)
    check_output(f"{tmp_path}/out/")
    with pytest.raises(OutputError, match="or a folder ending with /"):
        check_output(f"{tmp_path}/out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output(f"{tmp_path}/file/")
    assert quarantine_uri("s3://b/p/out/") == "s3://b/p/out.quarantine.parquet"


def test_parts_and_a_manifest_replace_an_earlier_dataset_whole(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    with DatasetWriter(f"{folder}/") as writer:
        for start in range(0, 300, 100):
            writer.write(predictions(range(start, start + 100)))
    assert sorted(p.name for p in folder.iterdir()) == [
        "_manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    # A second run with fewer parts, and refused rows taken out of a part.
    with DatasetWriter(f"{folder}/") as writer:
        writer.write(predictions(range(1000, 1010), "Coachella festival"))
        writer.write(predictions(range(2000, 2005)))
        writer.drop(np.array([False] * 9 + [True] + [False] * 5))
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert [p["path"] for p in manifest["parts"]] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert manifest["rows"] == 14 == sum(p["rows"] for p in manifest["parts"])
    assert writer.per_category == {"Coachella festival": 9, "Apple": 5}
    read = pd.read_parquet(folder)  # the manifest is not read as data
    assert read["tweet_id"].tolist() == [str(i) for i in range(1000, 1009)] + [
        str(i) for i in range(2000, 2005)
    ]


def test_a_failed_run_writes_no_part_and_keeps_the_earlier_dataset(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "predictions"
    with DatasetWriter(f"{folder}/") as writer:
        writer.write(predictions(range(5)))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with (
        pytest.raises(RuntimeError, match="mid-run"),
        DatasetWriter(f"{folder}/") as writer,
    ):
        writer.write(predictions(range(100, 200)))
        raise RuntimeError("mid-run")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
