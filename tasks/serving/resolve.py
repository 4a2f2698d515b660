"""Resolve ``champion``, a registered version or a bundle folder to a verified model.

Registered files are downloaded into ``<registry root>/registry/cache`` once and
checked against their manifest and the manifest hash recorded at registration
every time; nothing unverified is unpickled.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.infra import storage
from tasks.infra.caching import uncached_task
from tasks.infra.errors import ModelVerificationError, NoChampionError, RegistryError
from tasks.infra.registry import (
    CHAMPION,
    MODEL_ARTIFACT_PATH,
    TAG_MANIFEST_SHA,
    Registry,
    RegistryConfig,
    embedded_store_missing,
    root_of,
)
from tasks.infra.store import ArtifactMissing, verify_manifest
from tasks.ml.bundle import MANIFEST_FILE, bundle_digest
from tasks.serving.model import TweetClassifier
from tasks.serving.pyfunc import bundle_of

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

NO_CHAMPION = "no champion yet: run a retrain first or pass --model VERSION|PATH"


@dataclass
class LoadedModel:
    """A verified classifier and the version string predictions record."""

    model: TweetClassifier
    version: str
    path: Path
    registered: ModelVersion | None = None


def check_registered_bundle(local: Path, mv: ModelVersion, name: str) -> None:
    """A downloaded version's files must match their manifest and registered hash."""
    label = f"{name}/{mv.version}"
    local = bundle_of(local)
    try:
        verify_manifest(local)
    except ArtifactMissing as exc:
        raise ModelVerificationError(
            f"refusing {label}: {str(exc).replace(str(local), 'registered files')}"
        ) from None
    expected = mv.tags.get(TAG_MANIFEST_SHA)
    if expected and bundle_digest(local) != expected:
        raise ModelVerificationError(
            f"refusing {label}: its manifest does not match the registered "
            f"{TAG_MANIFEST_SHA}"
        )


def check_model_spec(
    spec: str, registry_root: str | Path, config: RegistryConfig
) -> Path | None:
    """Cheap pre-flight for ``resolve_model``: the spec names something that exists.

    A bundle folder must hold a manifest (its path is returned); ``champion`` or
    a version needs a registry (an embedded store that was never created has
    neither; None is returned). Hashes are checked later, when the model loads.
    """
    spec = str(spec).strip()
    version = spec.removeprefix(f"{config.model_name}/")
    if spec == CHAMPION or version.isdigit():
        if embedded_store_missing(config, registry_root):
            if spec == CHAMPION:
                raise NoChampionError(NO_CHAMPION)
            raise RegistryError(
                f"no model registry in {root_of(registry_root)} yet: run a retrain "
                "first"
            )
        return None
    return _local_bundle(spec)


def _local_bundle(spec: str) -> Path:
    path = Path(spec).expanduser()
    if (path / MANIFEST_FILE).is_file():
        return path
    if (path / MODEL_ARTIFACT_PATH / MANIFEST_FILE).is_file():  # a run directory
        return path / MODEL_ARTIFACT_PATH
    raise RegistryError(
        f"model {spec!r} is not 'champion', a version number, or a directory "
        "with a model bundle (manifest.json)"
    )


def resolve_model(
    spec: str, registry_root: str | Path, config: RegistryConfig
) -> LoadedModel:
    """Load ``champion``, a version (``3`` or ``<model>/3``) or a bundle directory."""
    spec = str(spec).strip()
    bundle = check_model_spec(spec, registry_root, config)
    if bundle is None:
        reg = Registry.open(registry_root, config)
        version = spec.removeprefix(f"{config.model_name}/")
        mv = reg.champion() if spec == CHAMPION else reg.version(version)
        if mv is None:
            raise NoChampionError(NO_CHAMPION)
        path = cached_version(reg, mv)
        label: str | None = f"{reg.name}/{mv.version}"
    else:
        path, mv, label = bundle, None, None
    model = TweetClassifier.load(path)
    return LoadedModel(model, label or f"path:{model.version}", path, mv)


def cached_version(reg: Registry, mv: ModelVersion) -> Path:
    """A registered version's files in the local cache, verified."""
    sha = mv.tags.get(TAG_MANIFEST_SHA, "unknown")
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", reg.name)
    cache = reg.root / "registry" / "cache" / safe_name / f"{mv.version}-{sha[:16]}"
    if cache.is_dir():
        try:
            check_registered_bundle(cache, mv, reg.name)
            return bundle_of(cache)
        except ModelVerificationError:
            shutil.rmtree(cache)  # a damaged cache is fetched again and re-checked
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".fetch-") as tmp:
        local = reg.download(mv.version, Path(tmp) / "model")
        check_registered_bundle(local, mv, reg.name)
        storage.move_into_place(local, cache)  # or another process filled it
    check_registered_bundle(cache, mv, reg.name)
    return bundle_of(cache)


@uncached_task("load-model")
def load_model(spec: str, registry_root: str, config: RegistryConfig) -> LoadedModel:
    """Resolve and verify the model (champion alias, registry version or folder)."""
    from prefect import get_run_logger

    logger = get_run_logger()
    started = time.perf_counter()
    loaded = resolve_model(spec, registry_root, config)
    logger.info(
        "load-model: %s -> %s (manifest verified, %.2fs) from %s",
        spec,
        loaded.version,
        time.perf_counter() - started,
        loaded.path,
    )
    return loaded
