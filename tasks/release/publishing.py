"""Assemble a run's outputs: the run directory, the model bundle and the report.

Everything is written under ``runs/.<run_id>.partial`` and renamed into place
when complete; ``LATEST`` is replaced atomically last, so it only ever names a
complete run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from data_contracts import get_contract, validate_frame
from tasks.infra import storage
from tasks.infra.store import ArtifactRef, ArtifactStore, write_manifest
from tasks.ml.embedding import (
    EMBEDDING_ARRAYS_FILE,
    EMBEDDING_INFO_FILE,
    WORD_VECTORS_FILE,
)
from tasks.stages.categories import Category
from tasks.stages.clustering import (
    CENTROIDS_FILE,
    CLUSTERS_FILE,
    CRITERION,
    K_SELECTION_PLOT,
    PROJECTION_PLOT,
)
from tasks.stages.training import CLASSIFIER_FILE, CONFUSION_PLOT, REPORT_FILE

LATEST_FILE = "LATEST"
RUN_INFO_FILE = "run.json"


@dataclass
class RunRecord:
    """What the run directory needs to know about one retrain."""

    run_id: str
    counts: dict[str, int]
    metrics: dict[str, float]
    clusters: dict
    categories: list[Category]
    refs: dict[str, ArtifactRef]
    config: dict
    code_version: str
    naming_basis: ArtifactRef | None = None
    extra: dict = field(default_factory=dict)


def pseudo_label_frame(
    prepared: pd.DataFrame, assignments: pd.DataFrame, categories: list[Category]
) -> pd.DataFrame:
    """One row per accepted tweet: id, split, text, cluster and category."""
    names = pd.Series(
        {c.cluster_id: c.category for c in categories}, dtype="str", name="category"
    )
    frame = prepared[["tweet_id", "split", "text"]].merge(
        assignments[["tweet_id", "cluster_id"]],
        on="tweet_id",
        how="left",
        validate="1:1",
    )
    if frame["cluster_id"].isna().any():
        raise ValueError("publishing: some accepted tweets have no cluster assignment")
    frame["cluster_id"] = frame["cluster_id"].astype("int64")
    frame["category"] = frame["cluster_id"].map(names).astype("str")
    validate_frame(frame, get_contract("pseudo_labels"), "publishing")
    return frame


def cluster_table(
    labels: pd.DataFrame,
    assignments: pd.DataFrame,
    categories: list[Category],
    examples: int = 3,
) -> list[dict]:
    """Per category: size, share, top words and the tweets closest to its centre."""
    data = labels.merge(assignments[["tweet_id", "distance"]], on="tweet_id")
    total = max(len(data), 1)
    rows = []
    for c in categories:
        members = data[data["cluster_id"] == c.cluster_id]
        if c.cluster_id < 0 and members.empty:
            continue
        closest = (
            members.nsmallest(examples, "distance")
            if c.cluster_id >= 0
            else members.head(examples)
        )
        rows.append(
            {
                "cluster_id": c.cluster_id,
                "category": c.category,
                "name_from": c.origin + (" (new)" if c.is_new else ""),
                "tweets": len(members),
                "share": round(len(members) / total, 4),
                "top_terms": ", ".join(c.top_terms[:8]),
                "examples": " | ".join(t[:100] for t in closest["text"]),
            }
        )
    return rows


def markdown_report(
    record: RunRecord, clusters: list[dict], mlflow_note: str = ""
) -> str:
    """The run's report in markdown (also published as a Prefect artifact)."""
    c, m = record.counts, record.metrics
    lines = [
        f"# tweetflow retrain {record.run_id}",
        "",
        f"- rows read: {c['rows_read']}; accepted: {c['accepted']}; "
        f"quarantined: {c['quarantined']}; exact duplicates removed: "
        f"{c['duplicates_removed']}",
    ]
    if c.get("replies_read"):
        lines.append(
            f"- brand replies read: {c['replies_read']}; linked to the customer "
            f"tweets they answer: {c['replies_linked']} (with accepted tweets "
            f"{c['replies_with_accepted']}, with quarantined ones "
            f"{c['replies_with_quarantined']}); not linked: {c['replies_unlinked']}"
            f"; tweets clustered with their replies: "
            f"{c['tweets_clustered_with_replies']}"
        )
    lines += [
        f"- categories discovered: k = {record.clusters['k']} "
        f"({'chosen by the ' + CRITERION if record.clusters['k_selection'] else 'given'})",
        f"- data snapshot: `{record.refs['raw'].sha256[:16]}`; code version: "
        f"`{record.code_version[:16]}`",
        "",
        "## Metrics",
        "",
        "The classifier's scores measure agreement with the KMeans pseudo-labels "
        "(how well it reproduces the partition), not correctness against true "
        "categories; silhouette and stability describe the clustering itself.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(m.items())]
    lines += ["", cluster_report(clusters, record.clusters, level=2)]
    lines += ["", "## Plots", "", f"![confusion matrix]({CONFUSION_PLOT})"]
    if mlflow_note:
        lines += ["", mlflow_note]
    return "\n".join(lines) + "\n"


def cluster_report(clusters: list[dict], description: dict, level: int = 1) -> str:
    """Markdown cluster report: sizes, top words, example tweets, 2-D projection."""
    h = "#" * level
    scores = description.get("k_selection") or {}
    lines = [
        f"{h} Categories",
        "",
        f"k = {description['k']}; silhouette {description['silhouette']:.3f}; "
        f"stability (ARI between two runs on other samples and seeds) "
        f"{description['stability_ari']:.3f}.",
    ]
    if scores:
        lines += [
            "",
            f"{h}# Choosing k",
            "",
            f"{CRITERION} per k (how much more it costs to merge k categories into "
            "k - 1 than to reach k from k + 1; the largest jump is chosen, or the "
            "previous run's k when it is as good): "
            + ", ".join(
                (
                    f"**{k}: {float(v):.2f}**"
                    if int(k) == description["k"]
                    else f"{k}: {float(v):.2f}"
                )
                for k, v in scores.items()
            )
            + ".",
            "",
            f"![criterion per k]({K_SELECTION_PLOT})",
        ]
    lines += [
        "",
        "| id | category | name from | tweets | share | top words |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['cluster_id']} | {r['category']} | {r['name_from']} | {r['tweets']} | "
        f"{r['share']:.1%} | {r['top_terms']} |"
        for r in clusters
    ]
    lines += ["", f"{h}# Example tweets (closest to each centre)", ""]
    lines += [f"- **{r['category']}**: {r['examples']}" for r in clusters]
    lines += ["", f"![clusters]({PROJECTION_PLOT})"]
    return "\n".join(lines) + "\n"


def inline_images(markdown: str, folder: Path, names: list[str]) -> str:
    """Embed the named images of ``folder`` in ``markdown`` as data URIs.

    The Prefect UI cannot reach the run folder, so the report it shows carries
    its plots inside.
    """
    for name in names:
        path = folder / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            markdown = markdown.replace(
                f"]({name})", f"](data:image/png;base64,{data})"
            )
    return markdown


def build_model_bundle(
    target: Path,
    embedder: Path,
    clustering: Path,
    training: Path,
    record: RunRecord,
    preprocessing: dict,
) -> str:
    """Copy everything batch inference needs into ``target`` with a manifest.

    ``embedder``, ``clustering`` and ``training`` are the stages' verified
    model directories.
    """
    target.mkdir(parents=True)
    for source, name in [
        (embedder, WORD_VECTORS_FILE),
        (embedder, EMBEDDING_ARRAYS_FILE),
        (embedder, EMBEDDING_INFO_FILE),
        (clustering, CENTROIDS_FILE),
        (clustering, CLUSTERS_FILE),
        (training, CLASSIFIER_FILE),
    ]:
        shutil.copy2(source / name, target / name)
    (target / "categories.json").write_text(
        json.dumps([c.model_dump() for c in record.categories], indent=2) + "\n"
    )
    (target / "preprocessing.json").write_text(
        json.dumps(preprocessing, indent=2) + "\n"
    )
    return write_manifest(
        target,
        {"run_id": record.run_id, "code_version": record.code_version, "format": 1},
    )


def publish_run(
    store: ArtifactStore,
    record: RunRecord,
    labels: pd.DataFrame,
    quarantine: pd.DataFrame,
    report: str,
    clusters: list[dict],
    preprocessing: dict,
) -> Path:
    """Write ``runs/<run_id>/`` completely, then point ``LATEST`` at it.

    The run is assembled in ``runs/.<run_id>.partial`` (locally, under the store's
    local folder) and renamed into place; on S3 its files are uploaded with
    ``run.json`` last. ``LATEST`` moves only after that. Returns the local folder.
    """
    runs = store.root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    final = runs / record.run_id
    partial = runs / f".{record.run_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    labels.to_parquet(partial / "pseudo_labels.parquet", index=False)
    quarantine.to_parquet(partial / "quarantine.parquet", index=False)
    (partial / "metrics.json").write_text(
        json.dumps(
            {**record.counts, **record.metrics, "k": record.clusters["k"]},
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    (partial / "report.md").write_text(report)
    (partial / "cluster_report.md").write_text(
        cluster_report(clusters, record.clusters)
    )
    embedder = store.get_dir(record.refs["embedder"])
    clustering = store.get_dir(record.refs["clustering_model"])
    training = store.get_dir(record.refs["training_model"])
    shutil.copy2(clustering / PROJECTION_PLOT, partial / PROJECTION_PLOT)
    shutil.copy2(clustering / K_SELECTION_PLOT, partial / K_SELECTION_PLOT)
    shutil.copy2(training / CONFUSION_PLOT, partial / CONFUSION_PLOT)
    shutil.copy2(training / REPORT_FILE, partial / REPORT_FILE)
    model_sha = build_model_bundle(
        partial / "model", embedder, clustering, training, record, preprocessing
    )
    info = {
        "run_id": record.run_id,
        "counts": record.counts,
        "metrics": record.metrics,
        "k": record.clusters["k"],
        "refs": {name: ref.model_dump() for name, ref in record.refs.items()},
        "config": record.config,
        "code_version": record.code_version,
        "naming_basis": (
            record.naming_basis.model_dump() if record.naming_basis else None
        ),
        "model_sha256": model_sha,
        **record.extra,
    }
    (partial / RUN_INFO_FILE).write_text(
        json.dumps(info, indent=2, sort_keys=True) + "\n"
    )
    if store.remote:
        storage.upload_tree(
            partial, store.uri(f"runs/{record.run_id}"), last=RUN_INFO_FILE
        )
    os.replace(partial, final)
    store.write_text(LATEST_FILE, record.run_id + "\n")
    return final


def previous_run(store: ArtifactStore) -> dict | None:
    """The run info of the newest successful run, if any."""
    latest = store.read_text(LATEST_FILE)
    if latest is None:
        return None
    info = store.read_text(f"runs/{latest.strip()}/{RUN_INFO_FILE}")
    return json.loads(info) if info is not None else None
