"""A first run's embedded MLflow store, created by a child process beside the stages."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.infra.errors import RegistryError
from tasks.infra.registry import (
    READY_MARKER,
    Registry,
    RegistryConfig,
    create_store_in_background,
    embedded_db,
)


@pytest.fixture
def embedded(monkeypatch) -> None:
    """The registry is the embedded SQLite store (no tracking URI set)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def test_the_store_is_created_in_the_background_once(tmp_path: Path, embedded) -> None:
    config = RegistryConfig()
    creating = create_store_in_background(tmp_path, config)
    assert creating is not None
    creating.join(timeout=120)
    assert not creating.is_alive()
    db = embedded_db(tmp_path)
    assert db.is_file() and db.with_name(READY_MARKER).is_file()
    # A real MLflow store: the registry opens and answers.
    registry = Registry.open(tmp_path, config)
    assert registry.client.search_experiments(max_results=5)
    assert create_store_in_background(tmp_path, config) is None  # nothing to create


def test_no_background_work_for_a_configured_tracking_server(tmp_path: Path) -> None:
    config = RegistryConfig(tracking_uri="http://127.0.0.1:5999")
    assert create_store_in_background(tmp_path, config) is None
    assert not embedded_db(tmp_path).exists()


def _alembic_upgrade(db: Path, revision: str) -> None:
    """Migrate a new SQLite file to one of MLflow's schema revisions."""
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base

    url = f"sqlite:///{db}"
    engine = sqlalchemy.create_engine(url)
    Base.metadata.create_all(engine)  # MLflow's initial tables, as it does
    config = _get_alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


@pytest.fixture
def half_migrated(tmp_path: Path, embedded) -> Path:
    """What a creator killed inside MLflow's latest_metrics batch migration
    leaves under the real name: the schema one revision short and alembic's
    temporary copy. Returns the store's file."""
    import sqlite3

    db = embedded_db(tmp_path)
    db.parent.mkdir(parents=True)
    _alembic_upgrade(db, "a8c4a736bde6")
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    return db


def test_a_creator_killed_mid_migration_leaves_nothing_later_opens_trip_on(
    tmp_path: Path, embedded
) -> None:
    config = RegistryConfig()
    db = embedded_db(tmp_path)
    creating = create_store_in_background(tmp_path, config)
    assert creating is not None
    deadline = time.monotonic() + 120
    while not list(db.parent.glob(".mlflow.db.building-*")):  # migrating now
        assert creating.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    creating.process.kill()
    creating.process.wait(10)
    assert not db.exists()  # never a half-migrated store under the real name
    registry = Registry.open(tmp_path, config)
    assert registry.client.search_experiments(max_results=5)
    assert db.with_name(READY_MARKER).is_file()
    assert not list(db.parent.glob(".mlflow.db.building-*"))


def test_an_empty_half_migrated_store_is_set_aside_and_rebuilt(
    tmp_path: Path, half_migrated: Path
) -> None:
    db = half_migrated
    registry = Registry.open(tmp_path, RegistryConfig())
    registry.ensure_registered_model()
    assert registry.client.get_registered_model(registry.name)
    (aside,) = db.parent.glob("mlflow.db.incomplete-*")  # kept, not deleted
    assert aside.stat().st_size > 0


def test_a_half_migrated_store_holding_runs_is_never_replaced(
    tmp_path: Path, half_migrated: Path
) -> None:
    import sqlite3

    db = half_migrated
    with sqlite3.connect(db) as con:
        con.execute(
            "INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
            "VALUES (1, 'support', 'active')"
        )
    before = db.read_bytes()
    with pytest.raises(RegistryError, match="holds runs or models: repair it with"):
        Registry.open(tmp_path, RegistryConfig())
    assert db.read_bytes() == before
    assert not list(db.parent.glob("mlflow.db.incomplete-*"))


def test_mlflow_is_warmed_once_and_only_after_features() -> None:
    import sys

    from tasks.infra.registry import WARM_MODULES, WarmImports

    warm = WarmImports(after=["features"])
    warm("preflight")
    warm("ingestion")
    assert warm.thread is None  # not yet: steps before features
    warm("features")
    first = warm.thread
    assert first is not None and first.daemon
    warm("features")  # computed again (a changed setting)
    warm("clustering")
    assert warm.thread is first  # once
    first.join(120)
    assert not first.is_alive()
    assert all(name in sys.modules for name in WARM_MODULES)
