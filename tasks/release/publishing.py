"""Publishing: a retrain's run directory, its model bundle and its row accounting.

Everything is written under ``runs/.<run_id>.partial`` and renamed into place
when complete (on S3, uploaded with ``run.json`` last); ``LATEST`` is replaced
atomically by promotion, after registration, so it only ever names a complete,
registered run. Publishing is a task:
its uploads are retried like every other storage call.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from data_contracts import check_row_accounting, get_contract, validate_frame
from tasks.infra import storage
from tasks.infra.caching import uncached_task
from tasks.infra.lazy import np, pd
from tasks.infra.store import ArtifactRef, ArtifactStore
from tasks.ml.bundle import CATEGORIES_FILE, CLUSTERS_FILE, Category, build_bundle
from tasks.release.plots import confusion_figure, projection_figure, save_figure
from tasks.release.promotion import LATEST_FILE, REGISTRY_FILE
from tasks.release.report import cluster_report, markdown_report
from tasks.stages.clustering import (
    K_SELECTION_PLOT,
    PROJECTION_FILE,
    PROJECTION_PLOT,
    ClusteringOutput,
)
from tasks.stages.features import FeaturesOutput
from tasks.stages.ingestion import IngestionOutput
from tasks.stages.preparation import PreparationOutput
from tasks.stages.preprocessing import PreprocessingOutput
from tasks.stages.training import (
    CONFUSION_FILE,
    CONFUSION_PLOT,
    REPORT_FILE,
    TrainingOutput,
)

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
    if prepared["tweet_id"].equals(assignments["tweet_id"]):  # the stages' order
        frame = prepared[["tweet_id", "split", "text"]].reset_index(drop=True)
        frame["cluster_id"] = assignments["cluster_id"].to_numpy()
    else:
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
    if labels["tweet_id"].equals(assignments["tweet_id"]):  # the stages' order
        data = labels.assign(distance=assignments["distance"].to_numpy())
    else:
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


def draw_plots(
    folder: Path, clustering: Path, training: Path, categories: list[Category]
) -> None:
    """Draw the 2-D map and the confusion matrix into ``folder``, with names."""
    names = {c.cluster_id: c.category for c in categories}
    with np.load(clustering / PROJECTION_FILE, allow_pickle=False) as projection:
        figure = projection_figure(
            projection["points"], projection["cluster_id"], names
        )
    save_figure(figure, folder / PROJECTION_PLOT)
    confusion = json.loads((training / CONFUSION_FILE).read_text())
    figure = confusion_figure(
        np.array(confusion["matrix"]), confusion["classes"], names
    )
    save_figure(figure, folder / CONFUSION_PLOT)


def publish_run(
    store: ArtifactStore,
    record: RunRecord,
    quarantine: pd.DataFrame,
    report: str,
    clusters: list[dict],
    preprocessing: dict,
) -> Path:
    """Write ``runs/<run_id>/`` completely (``LATEST`` moves once it is registered).

    The run is assembled in ``runs/.<run_id>.partial`` (locally, under the store's
    local folder) and renamed into place; on S3 its files are uploaded with
    ``run.json`` last. Returns the local folder.
    """
    runs = store.root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    final = runs / record.run_id
    partial = runs / f".{record.run_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    # The stored pseudo-labels file itself (already checked), not a second encoding.
    shutil.copyfile(
        store.local_file(record.refs["pseudo_labels"]),
        partial / "pseudo_labels.parquet",
    )
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
    shutil.copy2(clustering / K_SELECTION_PLOT, partial / K_SELECTION_PLOT)
    draw_plots(partial, clustering, training, record.categories)
    shutil.copy2(training / REPORT_FILE, partial / REPORT_FILE)
    model_sha = build_bundle(
        partial / "model",
        embedder,
        clustering,
        training,
        record.categories,
        preprocessing,
        {"run_id": record.run_id, "code_version": record.code_version},
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
    if not storage.move_into_place(partial, final):
        raise RuntimeError(f"run folder {final} already exists (run ids are unique)")
    return final


def previous_run(store: ArtifactStore) -> dict | None:
    """The run info of the newest successful run, if any."""
    latest = store.read_text(LATEST_FILE)
    if latest is None:
        return None
    info = store.read_text(f"runs/{latest.strip()}/{RUN_INFO_FILE}")
    return json.loads(info) if info is not None else None


class UnchangedRun(BaseModel):
    """The newest run, when a retrain would publish exactly it again."""

    run_id: str
    run_location: str
    local_run_dir: str
    counts: dict[str, int]
    metrics: dict[str, float]
    k: int
    categories: dict[int, str]
    model_version: str
    promotion: str
    promotion_reason: str
    mlflow_run_id: str = ""
    mlflow_run_url: str = ""
    model_version_url: str = ""


STAGE_REFS = {  # run.json's reference name -> (stage output, field)
    "raw": ("ingestion", "raw"),
    "prepared": ("preparation", "prepared"),
    "preprocessed": ("preprocessing", "preprocessed"),
    "features": ("features", "features"),
    "embedder": ("features", "embedder"),
    "assignments": ("clustering", "assignments"),
    "clustering_model": ("clustering", "model"),
    "training_model": ("training", "model"),
}


def unchanged_since(
    store: ArtifactStore,
    outputs: StageOutputs,
    parameters: BaseModel,
    code_version: str,
) -> UnchangedRun | None:
    """The newest run if this retrain changes nothing: same code, same settings
    (the log level aside), the same output from every stage and the same
    category names, and that run is registered. Its model bundle would be byte
    for byte the registered one, so nothing is published or registered again.
    A forced promotion always goes through the registry.
    """
    config = parameters.model_dump(mode="json")
    previous = previous_run(store)
    if previous is None or config.get("promote") == "force":
        return None
    run_id = previous["run_id"]
    registry = store.read_text(f"runs/{run_id}/{REGISTRY_FILE}")
    names = store.read_text(f"runs/{run_id}/model/{CATEGORIES_FILE}")
    if registry is None or names is None or previous["code_version"] != code_version:
        return None
    # Where the per-row work ran changes no output (the partitions write what
    # the in-process path writes).
    ignored = {"log_level", "dask_address", "dask_workers", "partition_rows"}
    if {k: v for k, v in previous["config"].items() if k not in ignored} != {
        k: v for k, v in config.items() if k not in ignored
    }:
        return None
    for name, (stage, attribute) in STAGE_REFS.items():
        ref = getattr(getattr(outputs, stage), attribute)
        if previous["refs"].get(name, {}).get("sha256") != ref.sha256:
            return None
    if json.loads(names) != [c.model_dump() for c in outputs.categories]:
        return None
    record = json.loads(registry)
    location = (
        storage.join(store.root_uri, "runs", run_id)
        if store.remote
        else str(store.root / "runs" / run_id)
    )
    return UnchangedRun(
        run_id=run_id,
        run_location=location,
        local_run_dir=str(store.root / "runs" / run_id),
        counts=previous["counts"],
        metrics=previous["metrics"],
        k=previous["k"],
        categories={c.cluster_id: c.category for c in outputs.categories},
        model_version=record["model_version"],
        promotion=record["promotion"],
        promotion_reason=record["reason"],
        mlflow_run_id=record.get("mlflow_run_id", ""),
        mlflow_run_url=record.get("mlflow_run_url", ""),
        model_version_url=record.get("model_version_url", ""),
    )


def run_id_now() -> str:
    """A sortable run id: UTC time plus the flow run id's first characters."""
    from prefect.runtime import flow_run

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = str(flow_run.id)[:8] if flow_run.id else "local"
    return f"{stamp}-{suffix}"


def naming_basis(previous: dict | None, clustering_sha: str) -> ArtifactRef | None:
    """The previous labels that names are carried over from.

    When the clustering is unchanged since the previous run, the previous run's
    own basis is reused, so a repeated run computes the same names (and hits
    the cache).
    """
    if previous is None:
        return None
    if previous["refs"]["clustering_model"]["sha256"] == clustering_sha:
        basis = previous.get("naming_basis")
        return ArtifactRef.model_validate(basis) if basis else None
    return ArtifactRef.model_validate(previous["refs"]["pseudo_labels"])


class StageOutputs(BaseModel):
    """What a retrain's stages produced (references and figures)."""

    model_config = ConfigDict(frozen=True)

    ingestion: IngestionOutput
    preparation: PreparationOutput
    preprocessing: PreprocessingOutput
    features: FeaturesOutput
    clustering: ClusteringOutput
    categories: list[Category]
    training: TrainingOutput
    naming_basis: ArtifactRef | None = None


class PublishedRun(BaseModel):
    """A published run: where it is and what the report needs."""

    run_id: str
    run_location: str  # the run folder's URI (S3) or local path
    local_run_dir: str
    counts: dict[str, int]
    metrics: dict[str, float]
    clusters: dict
    categories: dict[int, str]
    table: list[dict]
    report: str


def run_counts(
    outputs: StageOutputs,
    accepted: int,
    replies_with_accepted: int,
    quarantine: pd.DataFrame,
    clusters: dict,
) -> dict[str, int]:
    """Every row and reply read, accounted for; raises if they do not add up."""
    ing, prep = outputs.ingestion, outputs.preparation
    counts = {
        "rows_read": ing.rows_read - ing.outbound_skipped - ing.replies_read,
        "outbound_skipped": ing.outbound_skipped,
        "accepted": accepted,
        "quarantined": len(quarantine),
        "duplicates_removed": prep.duplicates_removed,
        "no_known_words": outputs.features.no_known_words,
        **{f"{k}_rows": v for k, v in prep.split_counts.items()},
        "replies_read": ing.replies_read,
        "replies_linked": ing.replies_linked,
        "replies_unlinked": sum(ing.replies_unlinked.values()),
        "replies_with_accepted": replies_with_accepted,
        "replies_with_quarantined": int(quarantine["n_replies"].sum()),
        "tweets_clustered_with_replies": int(clusters["tweets_with_reply_view"]),
    }
    check_row_accounting(counts, "accepted")
    return counts


@uncached_task("publish")
def publish(
    outputs: StageOutputs,
    parameters: BaseModel,
    code_version: str,
    stage_seconds: dict[str, float],
    *,
    artifacts_dir: str,
) -> PublishedRun:
    """Write the run folder (labels, quarantine, report, model bundle).

    ``parameters`` are the run's parameters (recorded in run.json; their
    ``preprocessing`` settings go into the model bundle).
    """
    config = parameters.model_dump(mode="json")
    from prefect import get_run_logger

    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    clus, cats = outputs.clustering, outputs.categories
    clusters = json.loads((store.get_dir(clus.model) / CLUSTERS_FILE).read_text())
    prepared = store.get_frame(
        outputs.preparation.prepared, columns=["tweet_id", "split", "text", "n_replies"]
    )
    assignments = store.get_frame(clus.assignments)
    labels = pseudo_label_frame(prepared, assignments, cats)
    labels_ref = store.put_frame(labels, "pseudo_labels", "pseudo_labels", checked=True)
    quarantine = pd.concat(
        [
            store.get_frame(outputs.ingestion.quarantine),
            store.get_frame(outputs.preparation.quarantine),
        ],
        ignore_index=True,
    )
    counts = run_counts(
        outputs, len(labels), int(prepared["n_replies"].sum()), quarantine, clusters
    )
    metrics = {
        "silhouette": clus.silhouette,
        "stability_ari": clus.stability_ari,
        **{
            k: v for k, v in outputs.training.metrics.items() if not k.endswith("_rows")
        },
    }
    refs = {
        "raw": outputs.ingestion.raw,
        "prepared": outputs.preparation.prepared,
        "preprocessed": outputs.preprocessing.preprocessed,
        "features": outputs.features.features,
        "embedder": outputs.features.embedder,
        "assignments": clus.assignments,
        "clustering_model": clus.model,
        "training_model": outputs.training.model,
        "pseudo_labels": labels_ref,
    }
    record = RunRecord(
        run_id=run_id_now(),
        counts=counts,
        metrics=metrics,
        clusters=clusters,
        categories=cats,
        refs=refs,
        config=config,
        code_version=code_version,
        naming_basis=outputs.naming_basis,
        extra={
            "stage_seconds": stage_seconds,
            "replies_unlinked": outputs.ingestion.replies_unlinked,
        },
    )
    table = cluster_table(labels, assignments, cats)
    report = markdown_report(record, table)
    run_dir = publish_run(
        store, record, quarantine, report, table, config["preprocessing"]
    )
    location = (
        storage.join(store.root_uri, "runs", record.run_id)
        if store.remote
        else str(run_dir)
    )
    get_run_logger().info(
        "publish: run %s -> %s (%.2fs)",
        record.run_id,
        location,
        time.perf_counter() - started,
    )
    return PublishedRun(
        run_id=record.run_id,
        run_location=location,
        local_run_dir=str(run_dir),
        counts=counts,
        metrics=metrics,
        clusters=clusters,
        categories={c.cluster_id: c.category for c in cats},
        table=table,
        report=report,
    )
