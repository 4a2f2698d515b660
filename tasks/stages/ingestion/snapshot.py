"""Raw snapshots: every file of a source read (incrementally) and checked.

Each file or object is parsed once per content version (S3 ETag, local size and
mtime) and kept in the store; a later snapshot reads only new or changed
objects and reuses the rest. Every snapshot records the exact objects and
versions it holds. In customer-support files the brand replies are linked to
the customer tweets they answer and kept as their ``context``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from data_contracts import get_contract, split_quarantine
from tasks.infra.caching import source_version
from tasks.infra.lazy import np, pd
from tasks.infra.store import ArtifactMissing, ArtifactRef, ArtifactStore
from tasks.stages.ingestion.config import IngestionConfig
from tasks.stages.ingestion.readers import read_file
from tasks.stages.ingestion.schema import NormalisedFile, no_replies, normalise_frame
from tasks.stages.ingestion.sources import SourceFile, resolve_source
from tasks.stages.ingestion.threads import link_replies

STAGE = "ingestion"


@dataclass(frozen=True)
class IngestionResult:
    """What ingestion read: the raw snapshot, its quarantine and the counts.

    ``rows_read`` counts every row of the source, brand replies included. With
    replies linked, ``replies_read`` = linked + the unlinked ones by reason, and
    ``outbound_skipped`` is 0; without, outbound rows are skipped and counted.
    """

    raw: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int
    outbound_skipped: int
    replies_read: int = 0
    replies_linked: int = 0
    replies_unlinked: dict[str, int] = field(default_factory=dict)
    addressees: tuple[str, ...] = ()


def assemble(
    files: list[NormalisedFile],
    rows_read: int,
    config: IngestionConfig,
    link_replies_to_tweets: bool,
) -> IngestionResult:
    """Concatenate normalised files, link replies (or skip them), check the contract."""
    raw = without_context(pd.concat([f.tweets for f in files], ignore_index=True))
    replies = pd.concat([f.replies for f in files], ignore_index=True)
    outbound = sum(f.outbound for f in files)
    if not link_replies_to_tweets or not len(replies):
        accepted, quarantine = split_quarantine(raw, get_contract("raw"), STAGE)
        return IngestionResult(
            accepted.reset_index(drop=True), quarantine, rows_read, outbound
        )
    linked = link_replies(raw["tweet_id"], replies, config.reply_depth)
    # A repeated tweet id carries its replies once, on its first row.
    rows, context, sizes = linked.per_row()
    texts = np.full(len(raw), None, dtype=object)
    texts[rows] = context
    raw["context"] = pd.Series(texts, index=raw.index, dtype="str")
    n_replies = np.zeros(len(raw), dtype=np.int64)
    n_replies[rows] = sizes
    raw["n_replies"] = n_replies
    accepted, quarantine = split_quarantine(raw, get_contract("raw"), STAGE)
    authors = pd.unique(replies["author_id"].dropna().astype("str"))
    addressees = sorted({"@" + a.lower() for a in authors if a.strip()})
    return IngestionResult(
        accepted.reset_index(drop=True),
        quarantine,
        rows_read,
        0,
        replies_read=len(replies),
        replies_linked=len(linked.linked),
        replies_unlinked=linked.unlinked,
        addressees=tuple(addressees),
    )


def without_context(tweets: pd.DataFrame) -> pd.DataFrame:
    """Normalised tweets in the raw schema with no brand replies linked (the
    columns are added to ``tweets`` itself: no copy of a large frame)."""
    tweets["context"] = pd.Series(None, index=tweets.index, dtype="str")
    tweets["n_replies"] = np.zeros(len(tweets), dtype=np.int64)
    return tweets


def raw_of_object(
    store: ArtifactStore, source: SourceFile, config: IngestionConfig
) -> tuple[IngestionResult, bool]:
    """One object as ingestion reads it when replies are skipped (batch
    inference): parsed once per content version and kept in ``store`` exactly
    as ``ingest_incremental`` keeps it (a later snapshot reuses it, and this
    reuses theirs), then checked against the raw contract. Returns the result
    and whether the parse was reused."""
    index = f"data/ingestion/objects/{_object_key(source, config)}.json"
    known = _parsed_object(store, index, with_replies=False)
    if known is None:
        df = read_file(source, config.encoding)
        parsed = normalise_frame(df, config, source.name)
        rows_read = len(df)
        del df
        _save_object(store, index, source, rows_read, parsed)
    else:
        parsed, entry = known
        rows_read = int(entry["rows_read"])
    accepted, quarantine = split_quarantine(
        without_context(parsed.tweets), get_contract("raw"), STAGE
    )
    result = IngestionResult(
        accepted.reset_index(drop=True), quarantine, rows_read, parsed.outbound
    )
    return result, known is not None


def keep_object(
    store: ArtifactStore, source: SourceFile, config: IngestionConfig
) -> tuple[dict, bool]:
    """One object parsed as a retrain reads it (brand replies kept, to be linked
    across objects) and kept in ``store`` for ``ingest_incremental`` to reuse:
    parsed once per content version. Returns its index entry and whether it
    was kept already."""
    index = f"data/ingestion/objects/{_object_key(source, config)}.json"
    known = store.read_text(index)
    if known is not None:
        entry = json.loads(known)
        try:
            for name in ("frame", "replies"):
                store.open_frame(ArtifactRef.model_validate(entry[name]))
            return entry, True
        except ArtifactMissing:
            pass
    df = read_file(source, config.encoding)
    parsed = normalise_frame(df, config, source.name)
    rows_read = len(df)
    del df
    return _save_object(store, index, source, rows_read, parsed), False


def ingest_frame(
    source_uri: str, config: IngestionConfig, link_replies_to_tweets: bool = False
) -> IngestionResult:
    """Read every file of the source and split off rows that break the raw contract.

    Brand replies are skipped (and counted) unless ``link_replies_to_tweets``.
    """
    files, read = [], 0
    for source in resolve_source(source_uri):
        df = read_file(source, config.encoding)
        read += len(df)
        files.append(normalise_frame(df, config, source.name))
        del df
    return assemble(files, read, config, link_replies_to_tweets)


def _object_key(source: SourceFile, config: IngestionConfig) -> str:
    """Identity of one object's parsed frame: content version, settings and code."""
    basis = [
        source.uri,
        source.version,
        source.encoding,
        config.model_dump(mode="json"),
        source_version("tasks.stages.ingestion"),
    ]
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def ingest_incremental(
    source_uri: str,
    config: IngestionConfig,
    store: ArtifactStore,
    link_replies_to_tweets: bool = True,
) -> tuple[IngestionResult, dict]:
    """Like ``ingest_frame`` (replies linked), reading only objects not already
    parsed in ``store``.

    Returns the result and the snapshot record: every object with its version,
    rows read and whether it was reused.
    """
    files: list[NormalisedFile] = []
    saved: list[tuple[SourceFile, int, Future[dict], bool]] = []
    # A new object's parsed frames are stored by a thread while the next object
    # is read and the snapshot assembled (Parquet writing releases the
    # interpreter lock); every store has finished before the record is made.
    with ThreadPoolExecutor(1, thread_name_prefix="tweetflow-objects") as saver:
        for source in resolve_source(source_uri):
            index = f"data/ingestion/objects/{_object_key(source, config)}.json"
            known = _parsed_object(store, index, link_replies_to_tweets)
            if known is None:
                df = read_file(source, config.encoding)
                parsed = normalise_frame(df, config, source.name)
                rows_read = len(df)
                del df  # the file's frame: what follows needs only the normalised one
                context = contextvars.copy_context()
                saving = saver.submit(
                    context.run, _save_object, store, index, source, rows_read, parsed
                )
            else:
                parsed, entry = known
                rows_read = int(entry["rows_read"])
                saving = Future()
                saving.set_result(entry)
            files.append(parsed)
            saved.append((source, rows_read, saving, known is not None))
        result = assemble(
            files, sum(rows for _, rows, _, _ in saved), config, link_replies_to_tweets
        )
        objects = []
        for source, _, saving, reused in saved:
            entry = saving.result()
            objects.append(
                {
                    "uri": source.uri,
                    "version": source.version,
                    "rows_read": entry["rows_read"],
                    "outbound_rows": entry["outbound_rows"],
                    "frame_sha256": entry["frame"]["sha256"],
                    "replies_sha256": entry["replies"]["sha256"],
                    "reused": reused,
                }
            )
    return result, {"source": source_uri, "objects": objects}


def _parsed_object(
    store: ArtifactStore, index: str, with_replies: bool = True
) -> tuple[NormalisedFile, dict] | None:
    """An object parsed by an earlier run and its index entry (None: not kept).

    Without ``with_replies`` (replies skipped, not linked) its brand replies
    are not read: an empty frame stands for them.
    """
    text = store.read_text(index)
    if text is None:
        return None
    entry = json.loads(text)
    try:
        parsed = NormalisedFile(
            store.get_frame(ArtifactRef.model_validate(entry["frame"])),
            (
                store.get_frame(ArtifactRef.model_validate(entry["replies"]))
                if with_replies
                else no_replies()
            ),
            entry["outbound_rows"],
        )
    except ArtifactMissing:
        return None
    return parsed, entry


def _save_object(
    store: ArtifactStore,
    index: str,
    source: SourceFile,
    rows_read: int,
    parsed: NormalisedFile,
) -> dict:
    """Store a new object's parsed frames, then its index entry; the entry."""
    entry = {
        "uri": source.uri,
        "version": source.version,
        "rows_read": rows_read,
        "outbound_rows": parsed.outbound,
        "frame": store.put_frame(parsed.tweets, "ingestion/objects").model_dump(),
        "replies": store.put_frame(parsed.replies, "ingestion/objects").model_dump(),
    }
    store.write_text(index, json.dumps(entry, sort_keys=True))
    return entry
