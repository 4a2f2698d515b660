"""Thread reconstruction: brand replies linked to the customer tweets they answer,
counted when they cannot be, carried through preparation as context."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.quality import SHARED_DATA, THREADS_FILE
from tasks.stages.ingestion import IngestionConfig, ingest_frame
from tasks.stages.ingestion.threads import (
    LOOP,
    NO_CUSTOMER,
    NOT_A_REPLY,
    PARENT_MISSING,
    REPEATED,
    link_replies,
    too_deep,
)
from tasks.stages.preparation import PreparationConfig, prepare_frame

THREADS = SHARED_DATA / THREADS_FILE


def replies(*rows: tuple[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reply_id": [r for r, _ in rows],
            "in_response_to": [p for _, p in rows],
            "author_id": "brand",
            "text": [f"reply {r}" for r, _ in rows],
        }
    ).astype({"reply_id": "str", "in_response_to": "str"})


def test_each_reply_is_linked_to_the_nearest_customer_tweet() -> None:
    customers = pd.Series(["c1", "c2"])
    result = link_replies(
        customers,
        replies(("r1", "c1"), ("r2", "r1"), ("r3", "c2")),  # r2: part 2 of r1
        max_depth=3,
    )
    linked = result.linked.set_index("reply_id")
    assert linked["tweet_id"].to_dict() == {"r1": "c1", "r2": "c1", "r3": "c2"}
    assert linked["depth"].to_dict() == {"r1": 1, "r2": 2, "r3": 1}
    assert result.unlinked == {}
    context = result.context
    assert context.loc["c1", "n_replies"] == 2
    assert context.loc["c1", "context"] == "reply r1\nreply r2"  # nearest first


def test_unlinkable_replies_are_counted_by_reason() -> None:
    customers = pd.Series(["c1"])
    frame = replies(
        ("broadcast", None),  # a brand tweet answering nothing
        ("orphan", "gone"),  # answers a tweet missing from the file
        ("a", "b"),  # a loop a -> b -> a
        ("b", "a"),
        ("opener", None),
        ("follow", "opener"),  # a thread the brand started
        ("d1", "c1"),
        ("d2", "d1"),
        ("d3", "d2"),
        ("d4", "d3"),  # four replies up: beyond max_depth
        ("d1", "c1"),  # the same reply id twice
    )
    result = link_replies(customers, frame, max_depth=3)
    assert set(result.linked["reply_id"]) == {"d1", "d2", "d3"}
    assert result.unlinked == {
        NOT_A_REPLY: 2,
        PARENT_MISSING: 1,
        LOOP: 2,
        NO_CUSTOMER: 1,
        too_deep(3): 1,
        REPEATED: 1,
    }
    assert len(result.linked) + sum(result.unlinked.values()) == len(frame)


def support_file(tmp_path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "tweet_id": ["1", "2", "3", "4", "5", "6"],
            "author_id": ["c1", "AmericanAir", "AmericanAir", "c2", "c3", "Delta"],
            "inbound": ["True", "False", "False", "True", "True", "False"],
            "created_at": "Wed Oct 11 06:55:44 +0000 2017",
            "text": [
                "@AmericanAir my bag never arrived",
                "@c1 Sorry about your bag. Please DM us your file reference 1/2",
                "@c1 and your claim number 2/2",
                "@AmericanAir my bag never arrived",  # same text as tweet 1
                "@Delta the flight was delayed",
                "@c9 We are sorry.",  # answers a tweet not in the file
            ],
            "in_response_to_tweet_id": ["", "1", "2", "", "", "99"],
        }
    )
    path = tmp_path / "support.csv"
    frame.to_csv(path, index=False)
    return path


def test_ingestion_keeps_replies_as_context_and_counts_them(tmp_path: Path) -> None:
    result = ingest_frame(
        str(support_file(tmp_path)), IngestionConfig(), link_replies_to_tweets=True
    )
    assert result.rows_read == 6
    assert result.outbound_skipped == 0
    assert (result.replies_read, result.replies_linked) == (3, 2)
    assert result.replies_unlinked == {PARENT_MISSING: 1}
    raw = result.raw.set_index("tweet_id")
    assert raw.loc["1", "n_replies"] == 2
    assert "claim number" in raw.loc["1", "context"]
    assert raw["n_replies"].sum() == result.replies_linked
    assert pd.isna(raw.loc["5", "context"])
    assert result.addressees == ("@americanair", "@delta")


def test_batch_inference_ingestion_still_skips_replies(tmp_path: Path) -> None:
    result = ingest_frame(str(support_file(tmp_path)), IngestionConfig())
    assert result.outbound_skipped == 3
    assert result.replies_read == 0
    assert result.raw["n_replies"].eq(0).all()


def test_a_stored_object_read_without_replies_needs_only_its_tweets(
    tmp_path: Path,
) -> None:
    """Batch inference reuses an object a retrain parsed without reading its
    brand replies; a retrain that finds them gone parses the object again."""
    import json

    from tasks.infra.store import ArtifactStore
    from tasks.stages.ingestion.snapshot import ingest_incremental

    source, config = str(support_file(tmp_path)), IngestionConfig()
    store = ArtifactStore(tmp_path / "store")
    linked, _ = ingest_incremental(source, config, store, True)
    (index,) = (tmp_path / "store/data/ingestion/objects").glob("*.json")
    replies = json.loads(index.read_text())["replies"]["uri"].removeprefix("file://")
    Path(replies).unlink()
    skipped, record = ingest_incremental(source, config, store, False)
    assert [o["reused"] for o in record["objects"]] == [True]
    fresh = ingest_frame(source, config)
    assert skipped.raw.equals(fresh.raw)
    assert (skipped.outbound_skipped, skipped.rows_read) == (3, 6)
    again, record = ingest_incremental(source, config, store, True)
    assert [o["reused"] for o in record["objects"]] == [False]
    assert again.raw.equals(linked.raw) and again.replies_linked == 2


def test_preparation_gives_a_kept_duplicate_every_reply(tmp_path: Path) -> None:
    raw = ingest_frame(
        str(support_file(tmp_path)), IngestionConfig(), link_replies_to_tweets=True
    ).raw
    # Tweet 4 repeats tweet 1's text: give the repeat the replies instead.
    raw["context"] = raw["context"].where(raw["tweet_id"].ne("1"), None)
    raw.loc[raw["tweet_id"].eq("4"), ["context", "n_replies"]] = [
        "@c1  Sorry &amp; more",
        2,
    ]
    raw.loc[raw["tweet_id"].eq("1"), "n_replies"] = 0
    result = prepare_frame(raw, PreparationConfig())
    assert result.duplicates_removed == 1
    kept = result.prepared.set_index("tweet_id")
    assert kept.loc["1", "n_replies"] == 2
    assert kept.loc["1", "context"] == "@c1 Sorry & more"  # cleaned like texts
    assert kept["n_replies"].sum() == raw["n_replies"].sum()


@pytest.mark.skipif(not THREADS.is_file(), reason=f"{THREADS} is absent")
def test_real_support_threads_link_every_reply_or_count_it() -> None:
    result = ingest_frame(str(THREADS), IngestionConfig(), link_replies_to_tweets=True)
    assert result.rows_read == 113_685
    assert result.replies_read == 51_698
    assert result.replies_linked + sum(result.replies_unlinked.values()) == 51_698
    assert result.replies_linked > 51_000
    assert len(result.raw) + len(result.quarantine) == 61_987
    assert (
        int(result.raw["n_replies"].sum()) + int(result.quarantine["n_replies"].sum())
        == result.replies_linked
    )
    assert result.addressees == ("@airline",)
