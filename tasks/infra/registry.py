"""The connection to MLflow's tracking store and model registry.

Release (tracking, promotion) and serving (resolving the champion) both talk
to the registry through this module: where it is, what the registered model
and its tags are called, and a thin client. MLflow is imported lazily (it is
slow to import), nothing happens at import time, telemetry is switched off
before MLflow is first imported unless the environment says otherwise, and
MLflow's own HTTP retries are off by default: the Prefect task calling the
registry retries transient failures, once, with backoff.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.infra import progress, storage
from tasks.infra.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
MODEL_ARTIFACT_PATH = "model"
ARTIFACT_LOCATION_ENV = "TWEETFLOW_MLFLOW_ARTIFACT_LOCATION"
LOCAL_UI = "http://127.0.0.1:5000"  # `make mlflow-ui` serves the embedded store here
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
TAG_ROLLBACK = "promotion_rollback"
TAG_VALUE_LIMIT = 5000
READY_TIMEOUT_SECONDS = 300.0
READY_MARKER = ".store-ready"  # beside mlflow.db once it is created and migrated


class RegistryConfig(BaseModel):
    """Where runs are tracked and models registered."""

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


def _mlflow() -> Any:  # the mlflow module
    """Import MLflow with telemetry, progress bars and its own retries off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    import mlflow
    from mlflow.telemetry.client import set_telemetry_client
    from mlflow.telemetry.utils import is_telemetry_disabled

    if is_telemetry_disabled():  # MLflow may have been imported before us
        set_telemetry_client()
    return mlflow


def root_of(registry_root: str | Path) -> Path:
    """The local folder the registry's embedded store and caches live in."""
    return Path(registry_root).expanduser().resolve()


def embedded_db(registry_root: str | Path) -> Path:
    """The embedded SQLite store under a registry root."""
    return root_of(registry_root) / "mlflow" / "mlflow.db"


def tracking_uri_for(config: RegistryConfig, registry_root: str | Path) -> str:
    """The tracking URI: the setting, else $MLFLOW_TRACKING_URI, else embedded SQLite."""
    return (
        config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{embedded_db(registry_root)}"
    )


def embedded_store_missing(config: RegistryConfig, registry_root: str | Path) -> bool:
    """Whether the registry is the embedded store and it was never created."""
    uri = tracking_uri_for(config, registry_root)
    return (
        uri == f"sqlite:///{embedded_db(registry_root)}"
        and not embedded_db(registry_root).is_file()
    )


def create_embedded_store(registry_root: str | Path, registry_uri: str) -> None:
    """Create (and migrate) the embedded SQLite store once, under a store lock.

    Two processes opening a new store at once would both run MLflow's schema
    migrations and one would fail; the ``mlflow-store`` lock lets one create
    it while the other waits, and a ready marker written afterwards lets every
    later open skip the lock. A new store is built under a temporary name and
    renamed into place once migrated, so a creator killed half-way leaves no
    ``mlflow.db`` that later opens would trip on.
    """
    from tasks.infra.lease import StoreLock

    db = embedded_db(registry_root)
    ready = db.with_name(READY_MARKER)
    if ready.is_file():
        return
    root = root_of(registry_root)
    with StoreLock(str(root), "mlflow-store", purpose=f"creating {ready.parent}"):
        if ready.is_file():
            return
        for stale in db.parent.glob(f".{db.name}.building-*"):
            stale.unlink()  # a creator killed earlier; we hold the lock
        if db.is_file() and not _migrate_unmarked(db, registry_uri):
            aside = db.with_name(
                f"{db.name}.incomplete-{time.strftime('%Y%m%dT%H%M%S')}"
            )
            os.replace(db, aside)
            progress.run_logger().warning(
                "the MLflow store %s was half-created and held no runs or models; "
                "moved it to %s and created a new one",
                db,
                aside.name,
            )
        if not db.is_file():
            _build_store(db, registry_uri)
        storage.write_bytes(str(ready), b"created\n")


def _touch_tables(tracking_uri: str, registry_uri: str) -> None:
    """Open (so create or migrate) the tracking and the registry tables."""
    client = _mlflow().MlflowClient(
        tracking_uri=tracking_uri, registry_uri=registry_uri
    )
    client.search_experiments(max_results=1)  # the tracking tables
    client.search_registered_models(max_results=1)  # the registry tables


def _forget_engines(uri: str) -> None:
    """Close MLflow's pooled connections to ``uri`` (it keeps one engine per
    URI for the process's life); the next client then opens the file anew."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as Models
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as Runs

    for store in (Runs, Models):
        engine = getattr(store, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()


def _build_store(db: Path, registry_uri: str) -> None:
    """Create and migrate a new store beside ``db``, then rename it into place."""
    building = db.with_name(f".{db.name}.building-{os.getpid()}")
    uri = f"sqlite:///{db}"
    building_uri = f"sqlite:///{building}"
    try:
        _touch_tables(
            building_uri, building_uri if registry_uri == uri else registry_uri
        )
        os.replace(building, db)
        folder = os.open(db.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)
    finally:
        building.unlink(missing_ok=True)


def _holds_records(db: Path) -> bool:
    """Whether a SQLite store has any run, experiment of its own or model."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        counts = {
            "runs": "SELECT COUNT(*) FROM runs",
            "registered_models": "SELECT COUNT(*) FROM registered_models",
            "experiments": "SELECT COUNT(*) FROM experiments WHERE experiment_id != 0",
        }
        return any(
            con.execute(sql).fetchone()[0] for t, sql in counts.items() if t in tables
        )


def _migrate_unmarked(db: Path, registry_uri: str) -> bool:
    """Open a store that has no ready marker (from before the marker, or left
    half-migrated by a creator killed under older code); False when it cannot
    be opened and holds nothing, so it may be set aside and rebuilt."""
    import sqlalchemy.exc

    uri = f"sqlite:///{db}"
    try:
        _touch_tables(uri, registry_uri)
        return True
    except (
        sqlalchemy.exc.SQLAlchemyError,
        _mlflow().exceptions.MlflowException,
    ) as exc:
        _forget_engines(uri)  # its connections would follow the file if set aside
        if _holds_records(db):
            raise RegistryError(
                f"the MLflow store {db} cannot be opened ({str(exc).splitlines()[0]}) "
                "and holds runs or models: repair it with "
                f"'mlflow db upgrade {uri}' or restore it from a backup"
            ) from exc
        return False


class StoreCreation:
    """A child process creating the embedded MLflow store."""

    def __init__(self, process: subprocess.Popen) -> None:
        """Follow ``process``."""
        self.process = process

    def join(self, timeout: float | None = None) -> None:
        """Wait for the store to be created (or the child to give up)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def is_alive(self) -> bool:
        """Whether the child is still creating the store."""
        return self.process.poll() is None


def create_store_in_background(
    registry_root: str | Path, config: RegistryConfig
) -> StoreCreation | None:
    """Start creating a new embedded store while the stages run; None when there
    is none to create.

    MLflow's import and schema migrations take several CPU-seconds on a first
    run. A child process does them on whatever core the stages leave idle (a
    thread would contend with them for the interpreter lock). Join it before
    the release opens the registry. A failure here is left for that
    ``Registry.open`` to raise again (with the store lock, it then creates the
    store or names what stops it); a child outliving a failed run only
    finishes creating the store.
    """
    if not embedded_store_missing(config, registry_root):
        return None
    fields = RegistryConfig.model_validate(
        config.model_dump(include=set(RegistryConfig.model_fields))
    )
    project = str(Path(__file__).resolve().parents[2])  # the same code as this run
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [project, path]))}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks.infra.registry",
            str(registry_root),
            fields.model_dump_json(),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return StoreCreation(process)


# What the release imports first, in order: MLflow, its SQL stores (their ORM
# models take seconds to declare) and the model flavour the release saves.
WARM_MODULES = (
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.pyfunc",
    "mlflow.models",
)


class WarmImports:
    """Imports MLflow in a daemon thread once a given step has been computed.

    Importing MLflow and its SQL stores takes several CPU-seconds, most of
    the release's time on a small corpus. Called (as a ``StageRunner``'s
    ``on_compute``) after each computed step, it starts a thread after the
    first of ``after``: started after features, the imports run beside
    clustering, which leaves the interpreter lock and a core mostly free
    (started with preparation, they slowed it by as much as they saved). A
    run served from cache never starts it. Nothing waits for it: an import
    the release starts meanwhile waits for the module, and a failure is left
    for the release's own import.
    """

    def __init__(self, after: Iterable[str]) -> None:
        """Start once one of the steps ``after`` has been computed."""
        self.after = frozenset(after)
        self.thread: threading.Thread | None = None

    def __call__(self, step: str) -> None:
        """Step ``step`` was computed: start importing after the first of ``after``."""
        if self.thread is None and step in self.after:
            self.thread = threading.Thread(
                target=self._warm, name="tweetflow-warm-mlflow", daemon=True
            )
            self.thread.start()

    @staticmethod
    def _warm() -> None:
        import importlib

        with contextlib.suppress(Exception):
            _mlflow()
            for name in WARM_MODULES:
                importlib.import_module(name)


def _create_store(argv: list[str]) -> int:
    """``python -m tasks.infra.registry ROOT CONFIG_JSON``: open (so create) the
    registry of the store at ROOT."""
    root, config = argv
    Registry.open(root, RegistryConfig.model_validate_json(config))
    return 0


def _is_local_store(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # C:\ paths


def artifact_location_for(
    config: RegistryConfig, registry_root: str | Path, tracking_uri: str
) -> str | None:
    """Artifact location for a new experiment (None: the server decides)."""
    explicit = config.artifact_location or os.environ.get(ARTIFACT_LOCATION_ENV)
    if explicit:
        return explicit
    if _is_local_store(tracking_uri):
        return (root_of(registry_root) / "mlflow" / "artifacts").as_uri()
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
    def open(cls, registry_root: str | Path, config: RegistryConfig) -> Registry:
        """Connect (creating the embedded SQLite store's folder if needed)."""
        uri = tracking_uri_for(config, registry_root)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        mlflow = _mlflow()
        registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
        if uri == f"sqlite:///{embedded_db(registry_root)}":
            create_embedded_store(registry_root, registry_uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
        return cls(client, uri, config, root_of(registry_root))

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
        return str(experiment.experiment_id)

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
            storage.move_into_place(fetched, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


if __name__ == "__main__":
    sys.exit(_create_store(sys.argv[1:]))
