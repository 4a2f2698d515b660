"""Tracking: log a published run to MLflow and register its model as a new version.

The run directory becomes an MLflow run (config as params, data snapshot and
code version as tags, metrics, reports, the model bundle under ``model/``) and
the bundle a new version of the registered model: ``create_model_version`` on
the logged folder (the bundle's own verified format; issue-free to load with
``TweetClassifier``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.infra.caching import uncached_task
from tasks.infra.errors import RegistryError
from tasks.infra.lazy import np
from tasks.infra.registry import (
    MODEL_ARTIFACT_PATH,
    TAG_CODE_VERSION,
    TAG_DATA_SHA,
    TAG_MANIFEST_SHA,
    TAG_PROMOTION,
    TAG_RUN_ID,
    TAG_VALUE_LIMIT,
    Registry,
    RegistryConfig,
)
from tasks.ml.bundle import MANIFEST_FILE, bundle_digest
from tasks.serving.model import TweetClassifier
from tasks.serving.pyfunc import save_pyfunc

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What the registered model needs to run, pinned to the versions that trained it.
MODEL_REQUIREMENTS = (
    "mlflow",
    "pandas",
    "numpy",
    "pyarrow",
    "scikit-learn",
    "scipy",
    "joblib",
    "gensim",
    "pandera",
    "pydantic",
    "pyyaml",
    "ftfy",
    "pystemmer",
)
GIT_COMMIT_ENV = "TWEETFLOW_GIT_COMMIT"
DATASET_DIGEST_LIMIT = 36  # MLflow's dataset digest column
PARAM_VALUE_LIMIT = 500  # the smallest param length MLflow servers have accepted
REPORT_FILES = (
    "report.md",
    "cluster_report.md",
    "metrics.json",
    "classification_report.txt",
    "run.json",
)


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
    # The bundle is byte-identical (same manifest hash) to this earlier version
    # of another run: nothing new was logged or registered.
    identical_to_run: str | None = None

    @property
    def model_version(self) -> str:
        """``<model name>/<version>``, as predictions record it."""
        return f"{self.model_name}/{self.version}"


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
    if not (run_dir / MODEL_ARTIFACT_PATH / MANIFEST_FILE).is_file():
        raise RegistryError(f"{run_dir} has no model bundle (model/manifest.json)")
    return json.loads(info_file.read_text())


def model_requirements() -> list[str]:
    """``name==version`` of each package the registered model imports."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def git_commit() -> str | None:
    """The commit the code runs from: ``TWEETFLOW_GIT_COMMIT`` (set in the image)
    or ``git rev-parse HEAD`` of the checkout; None when neither is known."""
    commit = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if commit:
        return commit
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and len(text) == 40 else None


def snapshot_dataset(info: dict) -> Any:  # mlflow.entities.DatasetInput
    """The raw snapshot a run trained on, as an MLflow dataset input: digest =
    its sha256 (as much as MLflow keeps; the whole hash is in the profile)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    raw = info.get("refs", {}).get("raw", {})
    sha = str(raw.get("sha256", "unknown"))
    source = str(info.get("config", {}).get("source", ""))
    dataset = Dataset(
        name="raw-snapshot",
        digest=sha[:DATASET_DIGEST_LIMIT],
        source_type="tweetflow-artifact-store",
        source=json.dumps({"uri": str(raw.get("uri", "")), "source": source}),
        schema=json.dumps({"contract": raw.get("contract")}),
        profile=json.dumps({"sha256": sha, "rows": int(raw.get("rows", 0))}),
    )
    return DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])


def _batched(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def log_run(
    run_dir: str | Path, registry_root: str | Path, config: RegistryConfig
) -> TrackedRun:
    """Log a published run to MLflow and register its model as a new version.

    Idempotent per tweetflow run: when a version tagged with this run id is
    already registered (a retried task), that version is returned. A bundle
    byte-identical to a registered version (same manifest hash; another run
    that changed nothing the model holds) registers nothing new either: that
    version is returned, marked ``identical_to_run``.
    """
    from mlflow.entities import Metric, Param

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    model_dir = run_dir / MODEL_ARTIFACT_PATH
    TweetClassifier.load(model_dir)  # every file verified before it is logged
    run_id = str(info["run_id"])
    model_sha = bundle_digest(model_dir)
    data_sha = str(info.get("refs", {}).get("raw", {}).get("sha256", "unknown"))
    code = str(info.get("code_version", "unknown"))
    reg = Registry.open(registry_root, config)
    experiment_id = reg.experiment_id()
    reg.ensure_registered_model()
    for mv in reg.client.search_model_versions(
        f"name = '{reg.name}' and tags.{TAG_RUN_ID} = '{run_id}'"
    ):
        if mv.tags.get(TAG_MANIFEST_SHA) == model_sha:
            return _tracked(reg, reg.wait_until_ready(mv.version), experiment_id)
    identical = reg.client.search_model_versions(
        f"name = '{reg.name}' and tags.{TAG_MANIFEST_SHA} = '{model_sha}'",
        order_by=["version_number ASC"],
    )
    if identical:
        mv = reg.wait_until_ready(identical[0].version)
        tracked = _tracked(reg, mv, experiment_id)
        return replace(tracked, identical_to_run=tracked.tweetflow_run_id)

    tags = {
        "tweetflow.run_id": run_id,
        "tweetflow.code_version": code,
        "tweetflow.data_snapshot_sha256": data_sha,
        "tweetflow.manifest_sha256": model_sha,
        "tweetflow.source": str(info.get("config", {}).get("source", "")),
        "tweetflow.stage_seconds": json.dumps(info.get("stage_seconds", {})),
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
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
        reg.client.log_inputs(mlflow_run_id, datasets=[snapshot_dataset(info)])
        reg.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=reg.root, prefix=".pyfunc-") as tmp:
            pyfunc = save_pyfunc(
                model_dir, Path(tmp) / "model", model_requirements(), PROJECT_ROOT
            )
            reg.client.log_artifacts(mlflow_run_id, str(pyfunc), MODEL_ARTIFACT_PATH)
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
        mlflow_run_id=mv.run_id or "",
        experiment_id=experiment_id,
        model_name=reg.name,
        version=str(mv.version),
        source=mv.source or "",
        manifest_sha256=mv.tags.get(TAG_MANIFEST_SHA, ""),
        data_sha256=mv.tags.get(TAG_DATA_SHA, ""),
        tracking_uri=reg.tracking_uri,
        run_url=reg.run_url(experiment_id, mv.run_id or ""),
        version_url=reg.version_url(str(mv.version)),
    )


@uncached_task("track")
def track(run_dir: str, config: RegistryConfig, *, artifacts_dir: str) -> TrackedRun:
    """Log the run to MLflow and register its model (a retry reuses the version)."""
    from prefect import get_run_logger

    from tasks.infra.store import ArtifactStore

    started = time.perf_counter()
    tracked = log_run(run_dir, ArtifactStore(artifacts_dir).root, config)
    if tracked.identical_to_run:
        get_run_logger().info(
            "track: the model is byte-identical to %s (run %s, manifest %s): "
            "nothing new registered (%.2fs)",
            tracked.model_version,
            tracked.identical_to_run,
            tracked.manifest_sha256[:12],
            time.perf_counter() - started,
        )
        return tracked
    get_run_logger().info(
        "track: run %s logged to MLflow run %s, registered as %s (%.2fs)",
        tracked.tweetflow_run_id,
        tracked.mlflow_run_id,
        tracked.model_version,
        time.perf_counter() - started,
    )
    return tracked
