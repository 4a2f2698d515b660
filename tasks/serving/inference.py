"""Batch inference: classify new tweets with a verified model bundle.

New tweets are read by the ingestion stage (the batch flow wires it), cleaned
by the training code (``tasks.ml.cleaning``) and tokenised and embedded by the
model (``tasks.ml.text``, ``tasks.ml.embedding``); only the steps that learn
something are skipped. Every row read is either predicted, quarantined with
its reason, or counted as an exact repeat.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from data_contracts import (
    check_row_accounting,
    get_contract,
    make_quarantine,
    validate_frame,
)
from tasks.infra import storage
from tasks.infra.caching import uncached_task
from tasks.infra.errors import InputError
from tasks.infra.lazy import np, pd
from tasks.infra.parallel import map_ordered
from tasks.infra.progress import current
from tasks.infra.store import (
    ArtifactRef,
    ArtifactStore,
    frame_to_parquet_bytes,
    parquet_options,
    sha256_file,
)
from tasks.ml.bundle import NO_WORDS_CLUSTER
from tasks.ml.cleaning import (
    CONFLICT_REASON,
    EMPTY_REASON,
    CleaningConfig,
    clean_and_check,
    clean_text,
    too_long_reason,
)
from tasks.ml.cleaning import STAGE as CLEANING_STAGE
from tasks.serving.model import TweetClassifier
from tasks.serving.resolve import LoadedModel

STAGE = "batch_inference"
CHUNK_ROWS = 100_000  # tweets read, classified and written at a time


class OutputError(InputError):
    """The output URI cannot take the predictions."""


def is_dataset(output: str) -> bool:
    """Whether the output names a folder (ending with /): a partitioned dataset."""
    return output.endswith("/")


def check_output(output: str) -> None:
    """The output must be a .parquet file URI, or a folder URI ending with / (a
    partitioned dataset), whose parent can be written."""
    if not output.endswith(".parquet") and not is_dataset(output):
        raise OutputError(
            f"output {output!r} must name a .parquet file or a folder ending with /"
        )
    if not storage.is_remote(output):
        target = storage.local_path(output.rstrip("/"))
        parent = target.parent
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"output folder {parent} is a file")
        if is_dataset(output) and target.exists() and not target.is_dir():
            raise OutputError(f"output folder {target} is a file")


PREDICTION_COLUMNS = [
    "tweet_id",
    "text",
    "category",
    "cluster_id",
    "confidence",
    "model_version",
]


@dataclass(frozen=True)
class InferenceResult:
    """Predictions, the rows that could not be classified, and the counts."""

    predictions: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates_removed: int
    no_known_words: int


def prepare_for_inference(
    raw: pd.DataFrame, config: CleaningConfig
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The training preparation for new tweets: same cleaning, same checks.

    Unlike training, repeated texts under different ids are all kept (each
    tweet gets its prediction); only exact repeats of a row (same id, same
    text) are dropped. Returns (usable rows, quarantine, exact repeats removed).
    """
    df, quarantined = clean_and_check(raw, config)
    before = len(df)
    df = df.drop_duplicates(subset=["tweet_id"], keep="first")
    return (
        df.reset_index(drop=True),
        pd.concat(quarantined, ignore_index=True),
        before - len(df),
    )


def classify_frame(
    raw: pd.DataFrame,
    model: TweetClassifier,
    model_version: str,
    config: CleaningConfig | None = None,
) -> InferenceResult:
    """Prepare raw tweets exactly as training does, then classify them.

    A pure function of one partition: rows in, predictions out.
    """
    prepared, quarantine, duplicates = prepare_for_inference(
        raw, config or CleaningConfig()
    )
    predictions = predictions_frame(prepared, model, model_version)
    validate_frame(predictions, get_contract("predictions"), STAGE)
    return InferenceResult(
        predictions[PREDICTION_COLUMNS],
        quarantine,
        duplicates,
        int(predictions["cluster_id"].eq(NO_WORDS_CLUSTER).sum()),
    )


def predictions_frame(
    prepared: pd.DataFrame, model: TweetClassifier, model_version: str
) -> pd.DataFrame:
    """Predictions for prepared (cleaned, checked) tweets."""
    scored = model.predict(prepared["text"])
    # The text columns move as they are (Arrow strings): a NumPy round trip
    # would make a Python string of every id and text.
    predictions = pd.DataFrame(
        {
            "tweet_id": prepared["tweet_id"].astype("str").array,
            "text": prepared["text"].astype("str").array,
            "category": scored["category"].to_numpy(),
            "cluster_id": scored["cluster_id"].to_numpy(),
            "confidence": scored["confidence"].to_numpy(),
            "model_version": model_version,
        }
    )
    return predictions.astype(
        {"text": "str", "category": "str", "model_version": "str"}
    )


def write_predictions(
    result: InferenceResult, quarantine: pd.DataFrame, output: str
) -> dict[str, str]:
    """Write predictions (and any quarantine) as Parquet; return where they went."""
    storage.write_bytes(output, frame_to_parquet_bytes(result.predictions))
    written = {"predictions": output}
    if len(quarantine):
        written["quarantine"] = quarantine_uri(output)
        storage.write_bytes(written["quarantine"], frame_to_parquet_bytes(quarantine))
    return written


def id_checks(
    ids: pd.Series, digests_of: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``clean_and_check``'s and ``prepare_for_inference``'s id rules on the ids
    of the usable rows: which ids come with more than one text (conflicts, all
    their rows set aside) and which rows are exact repeats of an earlier one
    (same id, same text). ``digests_of(rows)`` hashes the cleaned texts of the
    rows at those sorted positions; it is asked only for the rows whose id
    repeats (rare), so nothing of the other rows' texts needs keeping."""
    shared = ids.duplicated(keep=False).to_numpy()
    conflict = np.zeros(len(ids), dtype=bool)
    if shared.any():
        rows = np.flatnonzero(shared)
        pairs = pd.DataFrame({"id": ids.to_numpy()[rows], "hash": digests_of(rows)})
        texts = pairs.groupby("id")["hash"].transform("nunique")
        conflict[rows[texts.to_numpy() > 1]] = True
    repeat = np.zeros(len(ids), dtype=bool)
    repeat[~conflict] = ids[~conflict].duplicated(keep="first").to_numpy()
    return conflict, repeat


RAW_COLUMNS = ["tweet_id", "text", "source", "source_row", "n_replies"]


@dataclass(frozen=True)
class ChunkResult:
    """One chunk of raw rows classified: the predictions of the usable rows whose
    id is new in the chunk, every usable row's id and position, and the rows set
    aside with their reasons. The id rules across chunks are decided later."""

    predictions: pd.DataFrame
    ids: pd.Series  # of the usable rows
    first: np.ndarray  # per usable row: its id is new in the chunk (predicted)
    rows: np.ndarray  # per usable row: its position in the raw frame read
    text_hashes: np.ndarray  # per usable row: the cleaned text's hash (or empty)
    set_aside: pd.DataFrame
    reasons: np.ndarray

    def quarantine_by_reason(self) -> dict[str, pd.DataFrame]:
        """The set-aside rows as quarantine records, one frame per reason."""
        return {
            why: make_quarantine(
                self.set_aside[self.reasons == why], CLEANING_STAGE, why
            )
            for why in dict.fromkeys(self.reasons)
        }


def classify_chunk(
    start: int,
    chunk: pd.DataFrame,
    model: TweetClassifier,
    model_version: str,
    config: CleaningConfig,
    hash_texts: bool = False,
) -> ChunkResult:
    """Clean one chunk of raw rows (starting at input position ``start``), set
    aside the empty and too-long texts, and predict the usable rows whose id is
    new in the chunk (an id seen earlier is a repeat or a conflict, decided once
    every chunk is in: it is never predicted twice). With ``hash_texts`` the
    cleaned texts of the usable rows are hashed, for id rules decided elsewhere."""
    text = clean_text(chunk["text"], config.fix_mojibake)
    reason = np.full(len(chunk), None, dtype=object)
    reason[text.eq("").to_numpy()] = EMPTY_REASON
    reason[text.str.len().gt(config.max_chars).to_numpy()] = too_long_reason(config)
    usable = pd.isna(reason)
    cleaned = chunk.assign(text=text)
    ids = chunk["tweet_id"][usable]
    first = ~ids.duplicated(keep="first").to_numpy()
    rows = np.flatnonzero(usable)
    predictions = predictions_frame(cleaned.iloc[rows[first]], model, model_version)
    hashes = (
        pd.util.hash_array(text.to_numpy(dtype=object)[rows])
        if hash_texts
        else np.zeros(0, dtype=np.uint64)
    )
    return ChunkResult(
        predictions,
        ids,
        first,
        start + rows,
        hashes,
        cleaned[~usable],
        reason[~usable],
    )


def classify_raw(
    store: ArtifactStore,
    raw: ArtifactRef,
    ingestion_quarantine: pd.DataFrame,
    rows_read: int,
    outbound_skipped: int,
    output: str,
    model: TweetClassifier,
    model_version: str,
    config: CleaningConfig,
) -> dict[str, Any]:
    """Classify ingested tweets and write the predictions; return the summary.

    The snapshot is read, cleaned, classified (on every core) and written
    ``CHUNK_ROWS`` rows at a time, as ``classify_frame`` would in one piece;
    only the ids of every row are kept, for the rules that need the whole set
    (an id repeated with another text, exact repeats: the texts of repeated ids
    are read again at the end), and the rows they refuse (rare) are taken out of
    the written file. Memory does not grow with the input's texts. Raises if the row
    accounting does not add up: nothing is dropped silently.
    """
    progress = current()
    progress.phase("classifying", raw.rows, "rows")

    def classify_one(item: tuple[int, pd.DataFrame]) -> ChunkResult:
        return classify_chunk(item[0], item[1], model, model_version, config)

    chunks = _numbered(store.iter_frames(raw, columns=RAW_COLUMNS, rows=CHUNK_ROWS))
    quarantined: dict[str, list[pd.DataFrame]] = {}
    ids, predicted_rows, positions = [], [], []
    with prediction_writer(output) as writer:
        for done in map_ordered(classify_one, chunks):
            writer.write(done.predictions[PREDICTION_COLUMNS])
            ids.append(done.ids)
            predicted_rows.append(done.first)
            positions.append(done.rows)
            for why, frame in done.quarantine_by_reason().items():
                quarantined.setdefault(why, []).append(frame)
            progress.advance(len(done.reasons) + len(done.ids))
        if not ids:
            ids, positions = [pd.Series([], dtype="str")], [np.zeros(0, np.int64)]
        where = np.concatenate(positions)

        def digests_of(rows: np.ndarray) -> np.ndarray:
            return np.concatenate(
                [
                    pd.util.hash_array(part["text"].to_numpy(dtype=object))
                    for part in rows_of(store, raw, where[rows], RAW_COLUMNS, config)
                ]
            )

        conflict, repeat = id_checks(pd.concat(ids, ignore_index=True), digests_of)
        in_file = (
            np.concatenate(predicted_rows) if predicted_rows else np.zeros(0, bool)
        )
        writer.drop((conflict | repeat)[in_file])
        if conflict.any():
            quarantined[CONFLICT_REASON] = [
                conflict_quarantine(store, raw, where[conflict], config)
            ]
    return batch_summary(
        writer,
        ingestion_quarantine,
        quarantined,
        config,
        int(repeat.sum()),
        rows_read,
        outbound_skipped,
        output,
    )


def conflict_quarantine(
    store: ArtifactStore,
    raw: ArtifactRef,
    positions: np.ndarray,
    config: CleaningConfig,
) -> pd.DataFrame:
    """The raw rows at sorted ``positions`` (ids that came with more than one
    text), cleaned, as quarantine records."""
    parts = rows_of(store, raw, positions, RAW_COLUMNS, config)
    return make_quarantine(
        pd.concat(list(parts), ignore_index=True), CLEANING_STAGE, CONFLICT_REASON
    )


def batch_summary(
    writer: PredictionWriter,
    ingestion_quarantine: pd.DataFrame,
    quarantined: dict[str, list[pd.DataFrame]],
    config: CleaningConfig,
    repeats: int,
    rows_read: int,
    outbound_skipped: int,
    output: str,
) -> dict[str, Any]:
    """A finished batch's quarantine (ingestion's, then by reason: empty, too
    long, conflicting ids) written beside the predictions, its row accounting
    checked (raises if rows are unaccounted for), and its summary."""
    order = [EMPTY_REASON, too_long_reason(config), CONFLICT_REASON]
    quarantine = pd.concat(
        [ingestion_quarantine]
        + [frame for why in order for frame in quarantined.get(why, [])],
        ignore_index=True,
    )
    counts = {
        "rows_read": rows_read - outbound_skipped,
        "outbound_skipped": outbound_skipped,
        "predicted": writer.rows,
        "quarantined": len(quarantine),
        "duplicates_removed": repeats,
        "no_known_words": writer.no_known,
    }
    check_row_accounting(counts, "predicted")
    written = {"predictions": output}
    if len(quarantine):
        written["quarantine"] = quarantine_uri(output)
        storage.write_bytes(written["quarantine"], frame_to_parquet_bytes(quarantine))
    total = max(writer.rows, 1)
    return {
        "counts": counts,
        "categories": [
            {"category": c, "tweets": int(n), "share": round(n / total, 4)}
            for c, n in sorted(writer.per_category.items(), key=lambda kv: -kv[1])
        ],
        "quarantine_reasons": (
            quarantine["reason"].value_counts().to_dict() if len(quarantine) else {}
        ),
        "written": written,
    }


def rows_of(
    store: ArtifactStore,
    raw: ArtifactRef,
    rows: np.ndarray,
    columns: list[str],
    config: CleaningConfig,
) -> Iterator[pd.DataFrame]:
    """The raw rows at sorted positions ``rows``, their texts cleaned, one frame
    per chunk read (never more than a chunk in memory; empty frames skipped)."""
    start = 0
    for chunk in store.iter_frames(raw, columns=columns, rows=CHUNK_ROWS):
        inside = rows[(rows >= start) & (rows < start + len(chunk))] - start
        start += len(chunk)
        if len(inside):
            picked = chunk.iloc[inside]
            yield picked.assign(text=clean_text(picked["text"], config.fix_mojibake))


def _numbered(chunks: Iterator[pd.DataFrame]) -> Iterator[tuple[int, pd.DataFrame]]:
    start = 0
    for chunk in chunks:
        yield start, chunk
        start += len(chunk)


class PredictionWriter:
    """Writes predictions chunk by chunk to one Parquet file at an output URI.

    The file is assembled locally and moved (or uploaded) into place only when
    complete: a crash never leaves half a predictions file where one is
    expected. A run with no predictions writes an empty file.
    """

    def __init__(self, output: str) -> None:
        """Write the predictions to ``output`` (local path, file:// or s3://)."""
        self.output = output
        self.rows = 0
        self.no_known = 0
        self.per_category: dict[str, int] = {}
        self._folder = Path(tempfile.mkdtemp(prefix="tweetflow-predictions-"))
        self._path = self._folder / "predictions.parquet"
        self._writer: Any = None
        self._schema: Any = None
        self._options: dict[str, Any] = {}

    def _checked_table(self, predictions: pd.DataFrame) -> Any:  # pyarrow.Table
        """One chunk checked against the predictions contract and counted, as
        an Arrow table (the first chunk fixes the schema and Parquet options)."""
        import pyarrow as pa

        validate_frame(predictions, get_contract("predictions"), STAGE)
        table = pa.Table.from_pandas(
            predictions.reset_index(drop=True), preserve_index=False
        )
        if self._schema is None:
            self._schema = table.schema
            self._options = parquet_options(table.schema, table)
        self._count(predictions, 1)
        return table.cast(self._schema)

    def write(self, predictions: pd.DataFrame) -> None:
        """Check one chunk against the predictions contract and append it."""
        import pyarrow.parquet as pq

        table = self._checked_table(predictions)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, self._schema, **self._options)
        self._writer.write_table(table)

    def _count(self, predictions: pd.DataFrame, sign: int) -> None:
        self.rows += sign * len(predictions)
        self.no_known += sign * int(
            predictions["cluster_id"].eq(NO_WORDS_CLUSTER).sum()
        )
        for category, n in predictions["category"].value_counts().items():
            name = str(category)
            self.per_category[name] = self.per_category.get(name, 0) + sign * int(n)

    def drop(self, refused: np.ndarray) -> None:
        """Take the written rows marked in ``refused`` (in writing order) out."""
        if not refused.any():
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._writer.close()
        self._writer = None
        kept_path = self._folder / "kept.parquet"
        start = 0
        with pq.ParquetWriter(kept_path, self._schema, **self._options) as kept:
            for batch in pq.ParquetFile(self._path).iter_batches(CHUNK_ROWS):
                mask = refused[start : start + batch.num_rows]
                start += batch.num_rows
                self._count(batch.filter(pa.array(mask)).to_pandas(), -1)
                kept.write_table(pa.Table.from_batches([batch.filter(pa.array(~mask))]))
        kept_path.replace(self._path)

    def __enter__(self) -> PredictionWriter:
        """Open for writing."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Move the complete file into place, or drop it after an error."""
        try:
            if exc_type is None and self._schema is None:  # nothing was written
                self.write(empty_predictions())
            if self._writer is not None:
                self._writer.close()
            if exc_type is None:
                storage.replace_with_file(self._path, self.output)
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


class DatasetWriter(PredictionWriter):
    """Writes predictions as a partitioned Parquet dataset at a folder URI: one
    part per chunk written (``part-00000.parquet``, ...), each written whole, and
    ``_manifest.json`` (every part with its rows and sha256) written last.

    A dataset without its manifest is incomplete: a run replacing an earlier
    dataset removes the old manifest first, then the old parts. Parts are
    staged locally and moved (or uploaded) only once every chunk is in.
    """

    MANIFEST = "_manifest.json"

    def __init__(self, output: str) -> None:
        """Write the dataset to the folder ``output`` (local, file:// or s3://)."""
        super().__init__(output)
        self._parts: list[Path] = []

    def write(self, predictions: pd.DataFrame) -> None:
        """Check one chunk against the predictions contract; stage it as a part."""
        import pyarrow.parquet as pq

        table = self._checked_table(predictions)
        path = self._folder / f"part-{len(self._parts):05d}.parquet"
        pq.write_table(table, path, **self._options)
        self._parts.append(path)

    def drop(self, refused: np.ndarray) -> None:
        """Take the written rows marked in ``refused`` (in writing order) out."""
        if not refused.any():
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = 0
        for path in self._parts:
            table = pq.read_table(path)
            mask = refused[start : start + table.num_rows]
            start += table.num_rows
            if mask.any():
                self._count(table.filter(pa.array(mask)).to_pandas(), -1)
                pq.write_table(table.filter(pa.array(~mask)), path, **self._options)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Move every part into place, then the manifest; or drop them after an error."""
        import json

        try:
            if exc_type is None and self._schema is None:  # nothing was written
                self.write(empty_predictions())
            if exc_type is None:
                folder = self.output.rstrip("/")
                if storage.exists(folder):
                    storage.remove(folder)  # its manifest first
                parts = []
                for path in self._parts:
                    parts.append(
                        {
                            "path": path.name,
                            "rows": _parquet_rows(path),
                            "sha256": sha256_file(path),
                        }
                    )
                    storage.replace_with_file(path, f"{folder}/{path.name}")
                manifest = {"rows": self.rows, "parts": parts}
                storage.write_bytes(
                    f"{folder}/{self.MANIFEST}",
                    (json.dumps(manifest, indent=2) + "\n").encode(),
                )
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def empty_predictions() -> pd.DataFrame:
    """A predictions frame with no rows and the contract's dtypes."""
    return pd.DataFrame(
        {
            "tweet_id": pd.Series([], dtype="str"),
            "text": pd.Series([], dtype="str"),
            "category": pd.Series([], dtype="str"),
            "cluster_id": pd.Series([], dtype="int64"),
            "confidence": pd.Series([], dtype="float64"),
            "model_version": pd.Series([], dtype="str"),
        }
    )


@uncached_task("classify")
def classify(
    raw: ArtifactRef,
    ingestion_quarantine: ArtifactRef,
    rows_read: int,
    outbound_skipped: int,
    output: str,
    loaded: LoadedModel,
    config: CleaningConfig,
    artifacts_dir: str,
) -> dict[str, Any]:
    """Classify every usable ingested tweet; write predictions as Parquet."""
    from prefect import get_run_logger

    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    summary = classify_raw(
        store,
        raw,
        store.get_frame(ingestion_quarantine),
        rows_read,
        outbound_skipped,
        output,
        loaded.model,
        loaded.version,
        config,
    )
    counts = summary["counts"]
    if counts["quarantined"]:
        logger.warning(
            "classify: %d rows quarantined (%s) -> %s",
            counts["quarantined"],
            summary["quarantine_reasons"],
            summary["written"]["quarantine"],
        )
    seconds = time.perf_counter() - started
    logger.info(
        "classify: %d rows read; %d predicted, %d quarantined, %d exact repeats; "
        "%d with no known word; -> %s (%.2fs, %.0f tweets/s)",
        counts["rows_read"],
        counts["predicted"],
        counts["quarantined"],
        counts["duplicates_removed"],
        counts["no_known_words"],
        output,
        seconds,
        counts["rows_read"] / max(seconds, 1e-9),
    )
    return {**summary, "seconds": round(seconds, 3)}


def quarantine_uri(output: str) -> str:
    """Where the rows that could not be classified go, beside the predictions
    (beside the folder, for a dataset)."""
    return output.rstrip("/").removesuffix(".parquet") + ".quarantine.parquet"


def prediction_writer(output: str) -> PredictionWriter:
    """The writer for an output: one Parquet file, or a dataset of parts."""
    return DatasetWriter(output) if is_dataset(output) else PredictionWriter(output)


def summary_table(predictions: pd.DataFrame) -> list[dict]:
    """Tweets per category, largest first, with their share."""
    total = max(len(predictions), 1)
    counts = predictions["category"].value_counts()
    return [
        {"category": str(category), "tweets": int(n), "share": round(n / total, 4)}
        for category, n in counts.items()
    ]


@uncached_task("report")
def report_batch(summary: dict[str, Any], model_version: str, source: str) -> None:
    """Publish the batch-inference summary as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    counts = summary["counts"]
    share = counts["no_known_words"] / max(counts["predicted"], 1)
    lines = [
        "# tweetflow batch inference",
        "",
        f"- model: `{model_version}`",
        f"- source: `{source}`",
        f"- predictions: `{summary['written']['predictions']}`",
        f"- rows read {counts['rows_read']}: predicted {counts['predicted']}, "
        f"quarantined {counts['quarantined']}, exact repeats "
        f"{counts['duplicates_removed']}",
        f"- tweets with no known word: {counts['no_known_words']} ({share:.2%})",
        "",
        "| category | tweets | share |",
        "|---|---|---|",
        *(
            f"| {row['category']} | {row['tweets']} | {row['share']:.2%} |"
            for row in summary["categories"]
        ),
    ]
    create_markdown_artifact(
        key="batch-inference-summary",
        markdown="\n".join(lines) + "\n",
        description=f"predictions by {model_version}",
    )
    create_table_artifact(key="batch-inference-categories", table=summary["categories"])
