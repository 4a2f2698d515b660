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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.infra.errors import (  # noqa: F401 - part of the registry's API
    ModelVerificationError,
    NoChampionError,
    RegistryError,
)
from tasks.infra.store import ArtifactMissing, sha256_file, verify_manifest
from tasks.release.gate import (  # noqa: F401 - part of the registry's API
    FrozenSet,
    GateConfig,
    GateDecision,
    ModelScores,
    RuleResult,
    document_vectors,
    evaluate_gate,
    score_model,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from tasks.serving.model import TweetClassifier

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


# Configuration -----------------------------------------------------------------
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
    from tasks.serving.model import TweetClassifier

    spec = str(spec).strip()
    bundle = check_model_spec(spec, artifacts_dir, config)
    if bundle is None:
        reg = Registry.open(artifacts_dir, config)
        version = spec.removeprefix(f"{config.model_name}/")
        mv = reg.champion() if spec == CHAMPION else reg.version(version)
        if mv is None:
            raise NoChampionError(NO_CHAMPION)
        path = _cached_version(reg, mv)
        label = f"{reg.name}/{mv.version}"
    else:
        path, mv, label = bundle, None, None
    try:
        model = TweetClassifier.load(path)
    except ArtifactMissing as exc:
        raise ModelVerificationError(f"refusing model: {exc}") from None
    return LoadedModel(model, label or f"path:{model.version}", path, mv)


def check_model_spec(
    spec: str, artifacts_dir: str | Path, config: RegistryConfig
) -> Path | None:
    """Cheap pre-flight for ``resolve_model``: the spec names something that exists.

    A bundle folder must hold a manifest (its path is returned); ``champion`` or
    a version needs a registry (an embedded store that was never created has
    neither; None is returned). Hashes are checked later, when the model loads.
    """
    spec = str(spec).strip()
    version = spec.removeprefix(f"{config.model_name}/")
    if spec == CHAMPION or version.isdigit():
        if _embedded_store_missing(artifacts_dir, config):
            if spec == CHAMPION:
                raise NoChampionError(NO_CHAMPION)
            raise RegistryError(
                f"no model registry in {_root(artifacts_dir)} yet: run a retrain first"
            )
        return None
    return _local_bundle(spec)


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
