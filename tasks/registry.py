"""The model registry: track each retrain in MLflow, gate it, promote a champion.

A retrain's run directory is logged as an MLflow run (config as params, data
snapshot and code version as tags, metrics, reports, the model bundle under
``model/``) and registered as a new version of one registered model. A gate
then scores the challenger and the current champion on the same frozen set of
tweets, and the ``champion`` alias moves to the new version only when every
rule passes (or when forced), after the registered files were downloaded and
checked against their manifest. Batch inference resolves ``champion``, a
version number or a local bundle directory to a verified ``TweetClassifier``.

The bundle is registered as a plain artifact directory (no MLmodel file, no
pickle-based pyfunc): ``MlflowClient.create_model_version`` with the run's
artifact URI of ``model/`` as source. MLflow is imported lazily (it is slow to
import), nothing happens at import time, and telemetry is switched off before
MLflow is first imported unless the environment says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.errors import InputError
from tasks.store import ArtifactMissing, sha256_file, verify_manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from tasks.model import TweetClassifier

PromoteMode = Literal["never", "auto", "force"]
PromotionStatus = Literal["promoted", "rejected", "skipped"]
CHAMPION = "champion"
MODEL_ARTIFACT_PATH = "model"
FROZEN_FILE = "frozen_evaluation.parquet"
ARTIFACT_LOCATION_ENV = "TWEETFLOW_MLFLOW_ARTIFACT_LOCATION"
LOCAL_UI = "http://127.0.0.1:5000"  # `make mlflow-ui` serves the embedded store here
REPORT_FILES = (
    "report.md",
    "cluster_report.md",
    "metrics.json",
    "classification_report.txt",
    "run.json",
)
# Tags on every registered version.
TAG_RUN_ID = "tweetflow_run_id"
TAG_DATA_SHA = "data_snapshot_sha256"
TAG_MANIFEST_SHA = "manifest_sha256"
TAG_CODE_VERSION = "code_version"
TAG_FROZEN_SHA = "frozen_evaluation_sha256"
TAG_PROMOTION = "promotion"
TAG_REASON = "promotion_reason"
TAG_FORCED = "promotion_forced"
TAG_PREVIOUS = "previous_champion"
PARAM_VALUE_LIMIT = 500  # the smallest param length MLflow servers have accepted
TAG_VALUE_LIMIT = 5000
READY_TIMEOUT_SECONDS = 300.0


# Errors ------------------------------------------------------------------------
class RegistryError(InputError):
    """A registry problem a person can fix; the command line prints it as one line."""


class NoChampionError(RegistryError):
    """No version carries the champion alias yet."""


class ModelVerificationError(RegistryError):
    """Model files that do not match their manifest or their registered hash."""


# Configuration -----------------------------------------------------------------
class GateConfig(BaseModel):
    """The promotion gate's rules: absolute floors and no-regression tolerances.

    The defaults were measured on the bundled corpus (see config/promotion.yaml):
    a normal retrain passes, a model with too few categories or too little
    vocabulary fails at least one rule.
    """

    model_config = ConfigDict(extra="forbid")

    min_silhouette: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description="Floor on the challenger's cluster silhouette (run metrics, "
        "discovery split).",
    )
    min_stability_ari: float = Field(
        0.8,
        ge=-1.0,
        le=1.0,
        description="Floor on clustering stability: ARI between two KMeans runs "
        "with different seeds (run metrics).",
    )
    min_frozen_silhouette: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description="Floor on the silhouette of the challenger's own tweet vectors "
        "under its own predicted categories on the frozen evaluation set.",
    )
    max_no_known_share: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Ceiling on the share of frozen-set tweets with no word the "
        "challenger knows (they get no category).",
    )
    min_agreement_ari: float = Field(
        0.7,
        ge=-1.0,
        le=1.0,
        description="Floor on the ARI between champion's and challenger's predicted "
        "categories on the frozen set (skipped without a champion).",
    )
    max_silhouette_drop: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="How far the challenger's frozen-set silhouette may fall below "
        "the champion's (skipped without a champion).",
    )
    max_coverage_drop: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="How far the challenger's share of frozen-set tweets with a "
        "known word may fall below the champion's (skipped without a champion).",
    )
    silhouette_sample: int = Field(
        4000,
        ge=10,
        description="Frozen-set tweets scored by silhouette (quadratic cost); a "
        "seeded sample when the set is larger.",
    )
    seed: int = Field(0, description="Seed of that sample.")


class RegistryConfig(BaseModel):
    """Where runs are tracked and models registered, and how champions are chosen."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking (and registry) URI; empty: $MLFLOW_TRACKING_URI "
        "if set, else an embedded SQLite store under <artifacts_dir>/mlflow.",
    )
    artifact_location: str | None = Field(
        None,
        description="Artifact location of the experiment when it is created (e.g. "
        "s3://bucket/mlflow); empty: $TWEETFLOW_MLFLOW_ARTIFACT_LOCATION, else "
        "<artifacts_dir>/mlflow/artifacts for a local store or the server's default.",
    )
    experiment: str = Field(
        "tweetflow-retrain", description="MLflow experiment that retrains log to."
    )
    model_name: str = Field(
        "tweetflow-classifier", description="Registered model that versions go to."
    )
    promote: PromoteMode = Field(
        "auto",
        description="never: register only; auto: move the champion alias when every "
        "gate rule passes; force: move it regardless (recorded as forced).",
    )
    frozen_evaluation: str | None = Field(
        None,
        description="Parquet file of tweets (tweet_id, text) both models are scored "
        "on; empty: <artifacts_dir>/registry/frozen_evaluation.parquet, frozen from "
        "the first gated run's evaluation split.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig, description="Promotion gate rules."
    )


def load_registry_config(
    path: str | Path | None = None, **changes: Any
) -> RegistryConfig:
    """Registry settings from a YAML file (``config/promotion.yaml``) plus overrides."""
    data: dict[str, Any] = {}
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RegistryError(f"promotion config {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"promotion config {file}: {exc}") from None
    data.update(changes)
    try:
        return RegistryConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RegistryError(f"promotion config: {where}: {first['msg']}") from None


# MLflow plumbing ---------------------------------------------------------------
def _mlflow() -> Any:
    """Import MLflow with telemetry and progress bars off (unless set otherwise)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.telemetry.client import set_telemetry_client
    from mlflow.telemetry.utils import is_telemetry_disabled

    if is_telemetry_disabled():  # MLflow may have been imported before us
        set_telemetry_client()
    return mlflow


def _root(artifacts_dir: str | Path) -> Path:
    return Path(artifacts_dir).expanduser().resolve()


def embedded_db(artifacts_dir: str | Path) -> Path:
    """The embedded SQLite store of an artifacts directory."""
    return _root(artifacts_dir) / "mlflow" / "mlflow.db"


def tracking_uri_for(config: RegistryConfig, artifacts_dir: str | Path) -> str:
    """The tracking URI: the setting, else $MLFLOW_TRACKING_URI, else embedded SQLite."""
    return (
        config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{embedded_db(artifacts_dir)}"
    )


def _is_local_store(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # C:\ paths


def artifact_location_for(
    config: RegistryConfig, artifacts_dir: str | Path, tracking_uri: str
) -> str | None:
    """Artifact location for a new experiment (None: the server decides)."""
    explicit = config.artifact_location or os.environ.get(ARTIFACT_LOCATION_ENV)
    if explicit:
        return explicit
    if _is_local_store(tracking_uri):
        return (_root(artifacts_dir) / "mlflow" / "artifacts").as_uri()
    return None


def ui_base(tracking_uri: str) -> str:
    """Web address for links: the tracking server itself, else `make mlflow-ui`'s."""
    if urllib.parse.urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


@dataclass
class Registry:
    """An open connection to the tracking store and model registry."""

    client: MlflowClient
    tracking_uri: str
    config: RegistryConfig
    root: Path

    @classmethod
    def open(cls, artifacts_dir: str | Path, config: RegistryConfig) -> Registry:
        """Connect (creating the embedded SQLite store's folder if needed)."""
        uri = tracking_uri_for(config, artifacts_dir)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        mlflow = _mlflow()
        registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
        return cls(client, uri, config, _root(artifacts_dir))

    @property
    def name(self) -> str:
        """The registered model's name."""
        return self.config.model_name

    def run_url(self, experiment_id: str, run_id: str) -> str:
        """Web address of an MLflow run."""
        return (
            f"{ui_base(self.tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"
        )

    def version_url(self, version: str) -> str:
        """Web address of a registered model version."""
        name = urllib.parse.quote(self.name, safe="")
        return f"{ui_base(self.tracking_uri)}/#/models/{name}/versions/{version}"

    def experiment_id(self) -> str:
        """The experiment's id, creating it (with its artifact location) if missing."""
        from mlflow.exceptions import MlflowException

        name = self.config.experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = artifact_location_for(self.config, self.root, self.tracking_uri)
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            raise RegistryError(
                f"MLflow experiment {name!r} is deleted: restore it or choose "
                "another experiment name"
            )
        return experiment.experiment_id

    def ensure_registered_model(self) -> None:
        """Create the registered model unless it exists."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name,
                description="tweetflow tweet classifier; the champion alias is what "
                "batch inference uses.",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def version(self, version: str) -> ModelVersion:
        """One registered version; a clear error when it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"model {self.name!r} has no version {version}"
                ) from None
            raise

    def champion(self) -> ModelVersion | None:
        """The version carrying the champion alias, if any."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def wait_until_ready(self, version: str) -> ModelVersion:
        """Poll a version until MLflow reports it READY (remote stores copy files)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            mv = self.version(version)
            if mv.status == "READY":
                return mv
            if mv.status == "FAILED_REGISTRATION":
                raise RegistryError(
                    f"{self.name}/{version} failed registration: {mv.status_message}"
                )
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"{self.name}/{version} not ready after {READY_TIMEOUT_SECONDS:.0f}s"
                )
            time.sleep(1.0)

    def download(self, version: str, target: Path) -> Path:
        """Download a version's registered files into ``target`` (a new folder).

        The version's source URI is downloaded directly: ``models:/`` URIs
        ignore an explicitly passed registry in MLflow 3.17.
        """
        mlflow = _mlflow()
        source = self.client.get_model_version_download_uri(self.name, str(version))
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            fetched = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source,
                    dst_path=str(staging),
                    tracking_uri=self.tracking_uri,
                )
            )
            os.replace(fetched, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


# Tracking ----------------------------------------------------------------------
@dataclass(frozen=True)
class TrackedRun:
    """What tracking and registering one retrain produced, with links for reports."""

    tweetflow_run_id: str
    mlflow_run_id: str
    experiment_id: str
    model_name: str
    version: str
    source: str
    manifest_sha256: str
    data_sha256: str
    tracking_uri: str
    run_url: str
    version_url: str

    @property
    def model_version(self) -> str:
        """``<model name>/<version>``, as predictions record it."""
        return f"{self.model_name}/{self.version}"


def manifest_sha256(model_dir: Path) -> str:
    """The bundle's content hash: sha256 of its manifest's file map.

    Equals the ``model_sha256`` that publishing records in run.json.
    """
    files = json.loads((model_dir / "manifest.json").read_text())["files"]
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b`` -> string, each value cut to what MLflow accepts."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if len(text) > PARAM_VALUE_LIMIT:
            text = text[: PARAM_VALUE_LIMIT - 3] + "..."
        flat[name[:250]] = text
    return flat


def run_metrics(info: dict) -> dict[str, float]:
    """The numbers of a run record worth charting: metrics, k and row counts."""
    values = {k: float(v) for k, v in info.get("metrics", {}).items()}
    values.update({f"counts.{k}": float(v) for k, v in info.get("counts", {}).items()})
    if "k" in info:
        values["k"] = float(info["k"])
    return {k: v for k, v in values.items() if np.isfinite(v)}


def read_run(run_dir: Path) -> dict:
    """A run directory's run.json, after checking the files registration needs."""
    info_file = run_dir / "run.json"
    if not info_file.is_file():
        raise RegistryError(f"{run_dir} is not a run directory (no run.json)")
    if not (run_dir / MODEL_ARTIFACT_PATH / "manifest.json").is_file():
        raise RegistryError(f"{run_dir} has no model bundle (model/manifest.json)")
    return json.loads(info_file.read_text())


def _verified(model_dir: Path) -> dict[str, str]:
    try:
        return verify_manifest(model_dir)
    except ArtifactMissing as exc:
        raise ModelVerificationError(f"refusing model: {exc}") from None


def _batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def log_run(
    run_dir: str | Path, artifacts_dir: str | Path, config: RegistryConfig
) -> TrackedRun:
    """Log a published run to MLflow and register its model as a new version.

    Idempotent per tweetflow run: when a version tagged with this run id is
    already registered (a retried task), that version is returned.
    """
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    model_dir = run_dir / MODEL_ARTIFACT_PATH
    _verified(model_dir)
    run_id = str(info["run_id"])
    model_sha = manifest_sha256(model_dir)
    data_sha = str(info.get("refs", {}).get("raw", {}).get("sha256", "unknown"))
    code = str(info.get("code_version", "unknown"))
    reg = Registry.open(artifacts_dir, config)
    experiment_id = reg.experiment_id()
    reg.ensure_registered_model()
    for mv in reg.client.search_model_versions(
        f"name = '{reg.name}' and tags.{TAG_RUN_ID} = '{run_id}'"
    ):
        if mv.tags.get(TAG_MANIFEST_SHA) == model_sha:
            return _tracked(reg, reg.wait_until_ready(mv.version), experiment_id)

    tags = {
        "tweetflow.run_id": run_id,
        "tweetflow.code_version": code,
        "tweetflow.data_snapshot_sha256": data_sha,
        "tweetflow.manifest_sha256": model_sha,
        "tweetflow.source": str(info.get("config", {}).get("source", "")),
        "tweetflow.stage_seconds": json.dumps(info.get("stage_seconds", {})),
    }
    tags = {k: v[:TAG_VALUE_LIMIT] for k, v in tags.items()}
    report = run_dir / "report.md"
    if report.is_file():
        tags["mlflow.note.content"] = report.read_text()[:TAG_VALUE_LIMIT]
    run = reg.client.create_run(experiment_id, run_name=run_id, tags=tags)
    mlflow_run_id = run.info.run_id
    try:
        params = flatten(info.get("config", {}))
        params["data.snapshot_sha256"] = data_sha
        now = int(time.time() * 1000)
        for batch in _batched([Param(k, v) for k, v in sorted(params.items())], 100):
            reg.client.log_batch(mlflow_run_id, params=batch)
        metrics = [Metric(k, v, now, 0) for k, v in sorted(run_metrics(info).items())]
        for batch in _batched(metrics, 1000):
            reg.client.log_batch(mlflow_run_id, metrics=batch)
        for path in [
            *(run_dir / n for n in REPORT_FILES),
            *sorted(run_dir.glob("*.png")),
        ]:
            if path.is_file():
                reg.client.log_artifact(mlflow_run_id, str(path), "reports")
        reg.client.log_artifacts(mlflow_run_id, str(model_dir), MODEL_ARTIFACT_PATH)
    except BaseException:
        reg.client.set_terminated(mlflow_run_id, "FAILED")
        raise
    reg.client.set_terminated(mlflow_run_id, "FINISHED")
    mv = reg.client.create_model_version(
        reg.name,
        source=f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}",
        run_id=mlflow_run_id,
        tags={
            TAG_RUN_ID: run_id,
            TAG_DATA_SHA: data_sha,
            TAG_MANIFEST_SHA: model_sha,
            TAG_CODE_VERSION: code,
            TAG_PROMOTION: "pending",
        },
        description=f"tweetflow retrain {run_id}",
    )
    return _tracked(reg, reg.wait_until_ready(mv.version), experiment_id)


def _tracked(reg: Registry, mv: ModelVersion, experiment_id: str) -> TrackedRun:
    return TrackedRun(
        tweetflow_run_id=mv.tags.get(TAG_RUN_ID, ""),
        mlflow_run_id=mv.run_id,
        experiment_id=experiment_id,
        model_name=reg.name,
        version=str(mv.version),
        source=mv.source,
        manifest_sha256=mv.tags.get(TAG_MANIFEST_SHA, ""),
        data_sha256=mv.tags.get(TAG_DATA_SHA, ""),
        tracking_uri=reg.tracking_uri,
        run_url=reg.run_url(experiment_id, mv.run_id),
        version_url=reg.version_url(str(mv.version)),
    )


# The frozen evaluation set -----------------------------------------------------
@dataclass
class FrozenSet:
    """The fixed tweets both champion and challenger are scored on."""

    path: Path
    sha256: str
    frame: pd.DataFrame  # tweet_id, text
    created: bool = False


def frozen_path(artifacts_dir: str | Path, config: RegistryConfig) -> Path:
    """Where the frozen evaluation set is (configured, or under registry/)."""
    if config.frozen_evaluation:
        return Path(config.frozen_evaluation).expanduser().resolve()
    return _root(artifacts_dir) / "registry" / FROZEN_FILE


def frozen_evaluation_set(
    artifacts_dir: str | Path, config: RegistryConfig, run_dir: str | Path
) -> FrozenSet:
    """The frozen set; on first use, freeze ``run_dir``'s evaluation split.

    A configured file must exist. The default file is written once (temporary
    file, then a no-clobber link or an atomic rename) and never replaced.
    """
    path = frozen_path(artifacts_dir, config)
    created = False
    if not path.is_file():
        if config.frozen_evaluation:
            raise RegistryError(f"frozen evaluation set {path} does not exist")
        created = _freeze(Path(run_dir), path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # any unreadable file is the same problem
        raise RegistryError(
            f"frozen evaluation set {path} is unreadable: {exc}"
        ) from None
    missing = {"tweet_id", "text"} - set(frame.columns)
    if missing:
        raise RegistryError(
            f"frozen evaluation set {path} lacks columns {sorted(missing)}"
        )
    frame = frame[["tweet_id", "text"]].astype({"tweet_id": "str", "text": "str"})
    if frame.empty:
        raise RegistryError(f"frozen evaluation set {path} has no tweets")
    return FrozenSet(path, sha256_file(path), frame.reset_index(drop=True), created)


def _freeze(run_dir: Path, path: Path) -> bool:
    labels = run_dir / "pseudo_labels.parquet"
    if not labels.is_file():
        raise RegistryError(f"{run_dir} has no pseudo_labels.parquet to freeze")
    frame = pd.read_parquet(labels, columns=["tweet_id", "split", "text"])
    frame = frame[frame["split"] == "evaluation"][["tweet_id", "text"]]
    if frame.empty:
        raise RegistryError(
            f"{run_dir}: the evaluation split is empty; nothing to freeze"
        )
    frame = frame.astype({"tweet_id": "str", "text": "str"}).sort_values("tweet_id")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another writer got there first
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
            return True
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


# The gate ----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleResult:
    """One gate rule's outcome."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    explanation: str
    skipped: bool = False


@dataclass
class ModelScores:
    """How one model does on the frozen set."""

    cluster_id: np.ndarray
    known_share: float
    silhouette: float


@dataclass
class GateDecision:
    """The gate's verdict on a challenger."""

    promote: bool
    rules: list[RuleResult]
    reason: str
    frozen_sha256: str
    frozen_rows: int
    champion: str | None = None
    challenger_scores: dict[str, float] = field(default_factory=dict)
    champion_scores: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[RuleResult]:
        """The rules that failed."""
        return [r for r in self.rules if not r.passed]

    def as_table(self) -> list[dict]:
        """One row per rule (for a Prefect table artifact)."""
        return [
            {
                "rule": r.name,
                "value": None if r.value is None else round(r.value, 4),
                "threshold": None if r.threshold is None else round(r.threshold, 4),
                "result": "skipped" if r.skipped else ("pass" if r.passed else "FAIL"),
                "explanation": r.explanation,
            }
            for r in self.rules
        ]

    def markdown(self) -> str:
        """The decision as a markdown section for the run report."""
        lines = [
            "## Promotion gate",
            "",
            f"{'Passed' if self.promote else 'Failed'}: {self.reason}",
            "",
            f"Frozen evaluation set: {self.frozen_rows} tweets, sha256 "
            f"`{self.frozen_sha256[:16]}`; champion: {self.champion or 'none'}.",
            "",
            "| rule | value | threshold | result | why |",
            "|---|---|---|---|---|",
        ]
        for row in self.as_table():
            lines.append(
                f"| {row['rule']} | {_fmt(row['value'])} | {_fmt(row['threshold'])} | "
                f"{row['result']} | {row['explanation']} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def document_vectors(
    model: TweetClassifier, texts: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """A model's own tweet vectors and known-word counts, tokenised as it predicts."""
    from tasks.text import tokenise

    tokens = tokenise(
        texts,
        keep_mentions=model.preprocessing.get("keep_mentions", True),
        remove_stop_words=model.preprocessing.get("remove_stop_words", True),
    )
    return model.embedder.embed(tokens)


def score_model(
    model: TweetClassifier, texts: pd.Series, config: GateConfig
) -> ModelScores:
    """Predicted categories, known-word coverage and own-space silhouette."""
    from sklearn.metrics import silhouette_score

    predicted = model.predict(texts)
    vectors, n_known = document_vectors(model, texts)
    known = n_known > 0
    cluster_id = predicted["cluster_id"].to_numpy()
    rows = np.flatnonzero(known)
    if len(rows) > config.silhouette_sample:
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(rows, size=config.silhouette_sample, replace=False))
    labels = cluster_id[rows]
    n_labels = len(np.unique(labels))
    silhouette = (
        float(silhouette_score(vectors[rows], labels))
        if 2 <= n_labels < len(rows)
        else float("nan")
    )
    return ModelScores(
        cluster_id, float(known.mean()) if len(known) else 0.0, silhouette
    )


def _floor(name: str, value: float | None, floor: float, what: str) -> RuleResult:
    if value is None or not np.isfinite(value):
        return RuleResult(name, value, floor, False, f"{what} is unavailable")
    ok = value >= floor
    return RuleResult(
        name, value, floor, ok, f"{what} {value:.3f} {'>=' if ok else '<'} {floor:.3f}"
    )


def _skipped(name: str, threshold: float, why: str) -> RuleResult:
    return RuleResult(name, None, threshold, True, why, skipped=True)


def evaluate_gate(
    challenger_dir: str | Path,
    champion_dir: str | Path | None,
    run_metrics: dict[str, float],
    frozen: FrozenSet,
    config: GateConfig,
    champion_label: str | None = None,
    champion_problem: str | None = None,
) -> GateDecision:
    """Score the challenger (and the champion) on the frozen set against the rules.

    ``run_metrics`` are the challenger run's metrics (run.json ``metrics``). Both
    bundles are loaded through ``TweetClassifier.load``, which verifies them.
    ``champion_problem`` says why a champion exists but cannot be used (its
    files fail verification): that fails the gate, so only a forced promotion
    replaces it.
    """
    from sklearn.metrics import adjusted_rand_score

    from tasks.model import TweetClassifier

    texts = frozen.frame["text"]
    try:
        challenger = TweetClassifier.load(challenger_dir)
        champion = TweetClassifier.load(champion_dir) if champion_dir else None
    except ArtifactMissing as exc:
        raise ModelVerificationError(f"refusing model: {exc}") from None
    new = score_model(challenger, texts, config)
    g = config
    rules = [
        _floor(
            "silhouette",
            run_metrics.get("silhouette"),
            g.min_silhouette,
            "cluster silhouette (discovery split)",
        ),
        _floor(
            "stability_ari",
            run_metrics.get("stability_ari"),
            g.min_stability_ari,
            "KMeans stability ARI",
        ),
        _floor(
            "frozen_silhouette",
            new.silhouette,
            g.min_frozen_silhouette,
            "silhouette on the frozen set",
        ),
    ]
    no_known = 1.0 - new.known_share
    ok = no_known <= g.max_no_known_share
    rules.append(
        RuleResult(
            "no_known_share",
            no_known,
            g.max_no_known_share,
            ok,
            f"{no_known:.2%} of frozen tweets have no known word "
            f"({'<=' if ok else '>'} {g.max_no_known_share:.2%})",
        )
    )
    old: ModelScores | None = None
    if champion_problem:
        rules.append(RuleResult("champion_intact", None, None, False, champion_problem))
    if champion is None:
        why = "skipped: " + ("champion unusable" if champion_problem else "no champion")
        rules += [
            _skipped("agreement_ari", g.min_agreement_ari, why),
            _skipped("silhouette_drop", g.max_silhouette_drop, why),
            _skipped("coverage_drop", g.max_coverage_drop, why),
        ]
    else:
        old = score_model(champion, texts, config)
        agreement = float(adjusted_rand_score(old.cluster_id, new.cluster_id))
        rules.append(
            _floor(
                "agreement_ari",
                agreement,
                g.min_agreement_ari,
                "ARI between champion's and challenger's categories on the frozen set",
            )
        )
        drop = old.silhouette - new.silhouette
        if np.isfinite(drop):
            ok = drop <= g.max_silhouette_drop
            text = (
                f"frozen-set silhouette {new.silhouette:.3f} vs champion "
                f"{old.silhouette:.3f}: drop {drop:+.3f} "
                f"({'<=' if ok else '>'} {g.max_silhouette_drop:.3f})"
            )
        elif np.isfinite(new.silhouette):
            ok, text = True, "the champion's frozen-set silhouette is unavailable"
        else:
            ok, text = False, "the challenger's frozen-set silhouette is unavailable"
        rules.append(
            RuleResult("silhouette_drop", drop, g.max_silhouette_drop, ok, text)
        )
        drop = old.known_share - new.known_share
        ok = drop <= g.max_coverage_drop
        rules.append(
            RuleResult(
                "coverage_drop",
                drop,
                g.max_coverage_drop,
                ok,
                f"known-word coverage {new.known_share:.2%} vs champion "
                f"{old.known_share:.2%}: drop {drop:+.2%} "
                f"({'<=' if ok else '>'} {g.max_coverage_drop:.2%})",
            )
        )
    failed = [r for r in rules if not r.passed]
    skipped = sum(r.skipped for r in rules)
    if failed:
        reason = "failed " + "; ".join(f"{r.name}: {r.explanation}" for r in failed)
    else:
        reason = f"all {len(rules) - skipped} rules passed" + (
            f" ({skipped} skipped: no champion)" if skipped else ""
        )
    return GateDecision(
        promote=not failed,
        rules=rules,
        reason=reason,
        frozen_sha256=frozen.sha256,
        frozen_rows=len(frozen.frame),
        champion=champion_label if champion is not None else None,
        challenger_scores={
            "known_share": new.known_share,
            "silhouette": new.silhouette,
        },
        champion_scores=(
            {"known_share": old.known_share, "silhouette": old.silhouette}
            if old
            else {}
        ),
    )


# Promotion ---------------------------------------------------------------------
@dataclass(frozen=True)
class PromotionOutcome:
    """What promotion did with a version."""

    version: str
    status: PromotionStatus
    promoted: bool
    forced: bool
    reason: str
    previous_champion: str | None


def promote(
    artifacts_dir: str | Path,
    config: RegistryConfig,
    version: str,
    decision: GateDecision,
    mode: PromoteMode | None = None,
) -> PromotionOutcome:
    """Move the champion alias to ``version`` if the mode and the gate allow it.

    never: the alias stays; auto: it moves only when every rule passed; force:
    it moves regardless, tagged as forced. Before the alias moves (one call,
    last), the version must be READY and its registered files, downloaded
    afresh, must match their manifest and the registered manifest hash, so a
    crash or a bad upload leaves the alias on the previous champion.
    """
    mode = mode or config.promote
    reg = Registry.open(artifacts_dir, config)
    version = str(version)
    mv = reg.wait_until_ready(version)
    previous = reg.champion()
    previous_version = str(previous.version) if previous else None
    set_tag = reg.client.set_model_version_tag
    set_tag(reg.name, version, TAG_FROZEN_SHA, decision.frozen_sha256)
    set_tag(reg.name, version, "gate", "passed" if decision.promote else "failed")
    set_tag(reg.name, version, "gate_reason", decision.reason[:TAG_VALUE_LIMIT])
    for rule in decision.rules:
        set_tag(
            reg.name, version, f"gate.{rule.name}", rule.explanation[:TAG_VALUE_LIMIT]
        )

    def outcome(
        status: PromotionStatus, reason: str, forced: bool = False
    ) -> PromotionOutcome:
        set_tag(reg.name, version, TAG_PROMOTION, status)
        set_tag(reg.name, version, TAG_REASON, reason[:TAG_VALUE_LIMIT])
        promoted = status == "promoted"
        return PromotionOutcome(
            version, status, promoted, forced, reason, previous_version
        )

    if mode == "never":
        return outcome("skipped", "promotion mode is 'never'; gate " + decision.reason)
    if previous_version == version:
        return outcome("promoted", "already the champion")
    forced = not decision.promote
    if mode == "auto" and forced:
        return outcome("rejected", "gate " + decision.reason)
    try:
        verify_registered(reg, mv)
    except ModelVerificationError as exc:
        outcome("rejected", str(exc))
        raise
    reason = ("forced despite gate " if forced else "gate ") + decision.reason
    if previous_version:
        set_tag(reg.name, version, TAG_PREVIOUS, previous_version)
    set_tag(reg.name, version, TAG_FORCED, str(forced).lower())
    reg.client.set_registered_model_alias(reg.name, CHAMPION, version)
    return outcome("promoted", reason, forced)


def verify_registered(reg: Registry, mv: ModelVersion) -> None:
    """Download a version's files and check them against manifest and tag."""
    reg.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=reg.root, prefix=".verify-") as tmp:
        local = reg.download(mv.version, Path(tmp) / "model")
        _check_bundle(local, mv, reg.name)


def _check_bundle(local: Path, mv: ModelVersion, name: str) -> None:
    label = f"{name}/{mv.version}"
    try:
        verify_manifest(local)
    except ArtifactMissing as exc:
        raise ModelVerificationError(
            f"refusing {label}: {str(exc).replace(str(local), 'registered files')}"
        ) from None
    expected = mv.tags.get(TAG_MANIFEST_SHA)
    if expected and manifest_sha256(local) != expected:
        raise ModelVerificationError(
            f"refusing {label}: its manifest does not match the registered "
            f"{TAG_MANIFEST_SHA}"
        )


# Loading -----------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A verified classifier and the version string predictions record."""

    model: TweetClassifier
    version: str
    path: Path
    registered: ModelVersion | None = None


NO_CHAMPION = "no champion yet: run a retrain first or pass --model VERSION|PATH"


def resolve_model(
    spec: str, artifacts_dir: str | Path, config: RegistryConfig
) -> LoadedModel:
    """Load ``champion``, a version (``3`` or ``<model>/3``) or a bundle directory.

    Registered files are downloaded into ``<artifacts_dir>/registry/cache`` once
    and checked against their manifest and the registered manifest hash every
    time; nothing unverified is unpickled.
    """
    from tasks.model import TweetClassifier

    spec = str(spec).strip()
    version = spec.removeprefix(f"{config.model_name}/")
    if spec == CHAMPION or version.isdigit():
        if _embedded_store_missing(artifacts_dir, config):
            if spec == CHAMPION:
                raise NoChampionError(NO_CHAMPION)
            raise RegistryError(
                f"no model registry in {_root(artifacts_dir)} yet: run a retrain first"
            )
        reg = Registry.open(artifacts_dir, config)
        mv = reg.champion() if spec == CHAMPION else reg.version(version)
        if mv is None:
            raise NoChampionError(NO_CHAMPION)
        path = _cached_version(reg, mv)
        label = f"{reg.name}/{mv.version}"
    else:
        path = _local_bundle(spec)
        mv, label = None, None
    try:
        model = TweetClassifier.load(path)
    except ArtifactMissing as exc:
        raise ModelVerificationError(f"refusing model: {exc}") from None
    return LoadedModel(model, label or f"path:{model.version}", path, mv)


def _embedded_store_missing(artifacts_dir: str | Path, config: RegistryConfig) -> bool:
    uri = tracking_uri_for(config, artifacts_dir)
    return (
        uri == f"sqlite:///{embedded_db(artifacts_dir)}"
        and not embedded_db(artifacts_dir).is_file()
    )


def _local_bundle(spec: str) -> Path:
    path = Path(spec).expanduser()
    if (path / "manifest.json").is_file():
        return path
    if (path / MODEL_ARTIFACT_PATH / "manifest.json").is_file():  # a run directory
        return path / MODEL_ARTIFACT_PATH
    raise RegistryError(
        f"model {spec!r} is not 'champion', a version number, or a directory "
        "with a model bundle (manifest.json)"
    )


def _cached_version(reg: Registry, mv: ModelVersion) -> Path:
    sha = mv.tags.get(TAG_MANIFEST_SHA, "unknown")
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", reg.name)
    cache = reg.root / "registry" / "cache" / safe_name / f"{mv.version}-{sha[:16]}"
    if cache.is_dir():
        try:
            _check_bundle(cache, mv, reg.name)
            return cache
        except ModelVerificationError:
            shutil.rmtree(cache)  # a damaged cache is fetched again and re-checked
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        local = reg.download(mv.version, Path(tmp) / "model")
        _check_bundle(local, mv, reg.name)
        try:
            os.replace(local, cache)
        except OSError:  # another process filled the cache meanwhile
            if not cache.is_dir():
                raise
    _check_bundle(cache, mv, reg.name)
    return cache


# One call for the flow ---------------------------------------------------------
@dataclass
class RegistryOutcome:
    """Everything the retrain flow reports about tracking, gating and promotion."""

    tracked: TrackedRun
    decision: GateDecision
    promotion: PromotionOutcome

    def markdown(self) -> str:
        """Report section with links."""
        t, p = self.tracked, self.promotion
        return (
            f"## Registry\n\n- MLflow run: [{t.mlflow_run_id}]({t.run_url})\n"
            f"- model version: [{t.model_version}]({t.version_url})\n"
            f"- promotion: **{p.status}**{' (forced)' if p.forced else ''}: "
            f"{p.reason}\n- champion before: {p.previous_champion or 'none'}\n\n"
            + self.decision.markdown()
        )


def register_and_promote(
    run_dir: str | Path,
    artifacts_dir: str | Path,
    config: RegistryConfig,
    mode: PromoteMode | None = None,
) -> RegistryOutcome:
    """Track and register a run, gate it against the champion, maybe promote it."""
    run_dir = Path(run_dir)
    tracked = log_run(run_dir, artifacts_dir, config)
    frozen = frozen_evaluation_set(artifacts_dir, config, run_dir)
    champion: LoadedModel | None = None
    problem = None
    try:
        champion = resolve_model(CHAMPION, artifacts_dir, config)
    except NoChampionError:
        champion = None
    except ModelVerificationError as exc:
        problem = f"the current champion cannot be used: {exc}"
    if champion is not None and champion.version == tracked.model_version:
        champion = None  # a retried task: do not compare the version with itself
    info = json.loads((run_dir / "run.json").read_text())
    decision = evaluate_gate(
        run_dir / MODEL_ARTIFACT_PATH,
        champion.path if champion else None,
        {k: float(v) for k, v in info.get("metrics", {}).items()},
        frozen,
        config.gate,
        champion.version if champion else None,
        problem,
    )
    promotion = promote(artifacts_dir, config, tracked.version, decision, mode)
    return RegistryOutcome(tracked, decision, promotion)
