"""Contract tests: each schema rejects the frames it must reject."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_contracts import (
    ContractViolation,
    get_contract,
    split_quarantine,
    validate_frame,
)


def raw_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tweet_id": ["1", "2"],
            "author_id": [None, "a"],
            "created_at": [None, None],
            "text": ["@united hi", "claritin"],
            "source": ["s.csv", "s.csv"],
            "source_row": [0, 1],
            "context": [None, "@customer sorry to hear that"],
            "n_replies": [0, 1],
        }
    ).astype(
        {
            "tweet_id": "str",
            "author_id": "str",
            "created_at": "str",
            "text": "str",
            "context": "str",
        }
    )


def prepared_frame() -> pd.DataFrame:
    return (
        raw_frame()
        .drop(columns=["author_id", "created_at"])
        .assign(split=["discovery", "evaluation"])
    )


def features_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tweet_id": ["1", "2"],
            "split": ["discovery", "validation"],
            "n_known": [2, 1],
            "f000": np.array([0.1, 0.2], dtype=np.float32),
            "f001": np.array([0.3, 0.4], dtype=np.float32),
        }
    ).astype({"tweet_id": "str", "split": "str"})


def test_valid_frames_pass() -> None:
    validate_frame(raw_frame(), get_contract("raw"), "ingestion")
    validate_frame(prepared_frame(), get_contract("prepared"), "preparation")
    validate_frame(features_frame(), get_contract("features"), "features")


def test_raw_rejects_missing_text_as_row_level() -> None:
    frame = raw_frame()
    frame.loc[1, "text"] = None
    accepted, quarantine = split_quarantine(frame, get_contract("raw"), "ingestion")
    assert accepted["tweet_id"].tolist() == ["1"]
    assert quarantine["reason"].tolist() == ["text: not_nullable"]
    assert quarantine["stage"].tolist() == ["ingestion"]


def test_missing_column_is_frame_level_and_names_stage_and_column() -> None:
    with pytest.raises(ContractViolation) as info:
        split_quarantine(
            raw_frame().drop(columns=["text"]), get_contract("raw"), "ingestion"
        )
    message = str(info.value)
    assert "'ingestion'" in message and "'raw'" in message and "text" in message


def test_prepared_rejects_unknown_split_duplicate_ids_and_empty_text() -> None:
    frame = prepared_frame()
    frame.loc[0, "split"] = "training"
    with pytest.raises(ContractViolation, match="split"):
        validate_frame(frame, get_contract("prepared"), "preparation")
    dup = prepared_frame().assign(tweet_id=["1", "1"])
    with pytest.raises(ContractViolation, match="field_uniqueness"):
        validate_frame(dup, get_contract("prepared"), "preparation")
    empty = prepared_frame().assign(text=["", "ok"])
    with pytest.raises(ContractViolation, match="str_length"):
        validate_frame(empty, get_contract("prepared"), "preparation")


def test_prepared_rejects_extra_columns() -> None:
    with pytest.raises(ContractViolation, match="column_in_schema"):
        validate_frame(prepared_frame().assign(extra=1), get_contract("prepared"), "p")


def test_features_reject_nan_and_wrong_dtype() -> None:
    frame = features_frame()
    frame.loc[0, "f001"] = np.nan
    with pytest.raises(ContractViolation, match="f001"):
        validate_frame(frame, get_contract("features"), "features")
    wrong = features_frame().astype({"f000": "float64"})
    with pytest.raises(ContractViolation, match="dtype"):
        validate_frame(wrong, get_contract("features"), "features")


def test_assignments_and_pseudo_labels_reject_bad_clusters() -> None:
    assignments = pd.DataFrame(
        {
            "tweet_id": ["1"],
            "split": ["discovery"],
            "cluster_id": [-2],
            "distance": [0.5],
        }
    ).astype({"tweet_id": "str", "split": "str"})
    with pytest.raises(ContractViolation, match="cluster_id"):
        validate_frame(assignments, get_contract("cluster_assignments"), "clustering")
    labels = pd.DataFrame(
        {
            "tweet_id": ["1"],
            "split": ["discovery"],
            "text": ["hi"],
            "cluster_id": [0],
            "category": [""],
        }
    ).astype({"tweet_id": "str", "split": "str", "text": "str", "category": "str"})
    with pytest.raises(ContractViolation, match="category"):
        validate_frame(labels, get_contract("pseudo_labels"), "publishing")


def test_predictions_reject_confidence_out_of_range() -> None:
    frame = pd.DataFrame(
        {
            "tweet_id": ["1"],
            "text": ["hi"],
            "category": ["Apple"],
            "cluster_id": [1],
            "confidence": [1.5],
            "model_version": ["v1"],
        }
    ).astype(
        {"tweet_id": "str", "text": "str", "category": "str", "model_version": "str"}
    )
    with pytest.raises(ContractViolation, match="confidence"):
        validate_frame(frame, get_contract("predictions"), "inference")


def test_context_features_reject_repeated_tweets_and_nan() -> None:
    frame = pd.DataFrame(
        {
            "tweet_id": ["1", "2"],
            "row": [0, 3],
            "r000": np.array([0.1, 0.2], dtype=np.float32),
        }
    ).astype({"tweet_id": "str"})
    validate_frame(frame, get_contract("context_features"), "features")
    with pytest.raises(ContractViolation, match="field_uniqueness"):
        validate_frame(
            frame.assign(tweet_id=["1", "1"]), get_contract("context_features"), "f"
        )
    frame.loc[0, "r000"] = np.nan
    with pytest.raises(ContractViolation, match="r000"):
        validate_frame(frame, get_contract("context_features"), "features")


def test_quarantine_keeps_the_replies_of_a_set_aside_tweet() -> None:
    frame = raw_frame()
    frame.loc[1, "text"] = None
    _, quarantine = split_quarantine(frame, get_contract("raw"), "ingestion")
    assert quarantine["n_replies"].tolist() == [1]


def test_violation_table_lists_failure_cases() -> None:
    frame = prepared_frame().assign(split=["x", "y"])
    with pytest.raises(ContractViolation) as info:
        validate_frame(frame, get_contract("prepared"), "preparation")
    table = info.value.as_table()
    assert {row["failure_case"] for row in table} == {"x", "y"}
    assert all(row["column"] == "split" for row in table)
