"""A first run's embedded MLflow store, created by a child process beside the stages."""

from __future__ import annotations

from pathlib import Path

from tasks.infra.registry import (
    READY_MARKER,
    Registry,
    RegistryConfig,
    create_store_in_background,
    embedded_db,
)


def test_the_store_is_created_in_the_background_once(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
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
