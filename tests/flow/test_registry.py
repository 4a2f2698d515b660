"""Registry tests: MLflow's real SQLite store in tmp_path, real model bundles from
two small retrains (a normal one and a deliberately worse one), no mocks of MLflow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks.infra.store import ArtifactStore
from tests.conftest import small_params

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[2]


def retrain_run_dir(params) -> Path:
    from flows.retrain import retrain

    state = retrain(**params.as_flow_kwargs(), return_state=True)
    assert state.is_completed(), state.message
    return Path(state.result().run_dir)


@pytest.fixture(scope="module")
def runs(
    prefect_api, small_csv: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Two real retrains: 400 real tweets as usual, and a worse model trained
    on 100 of them with one Word2Vec epoch."""
    base = tmp_path_factory.mktemp("registry-runs")
    tiny = base / "tiny.csv"
    pd.read_csv(small_csv, dtype=str).head(100).to_csv(
        tiny, index=False, quoting=csv.QUOTE_ALL
    )
    return {
        "good": retrain_run_dir(small_params(small_csv, base / "good")),
        "worse": retrain_run_dir(
            small_params(tiny, base / "worse", features={"min_count": 3, "epochs": 1})
        ),
    }


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, created once (its migrations take seconds)."""
    from tasks.infra.registry import Registry, embedded_db
    from tasks.release.config import ReleaseConfig as RegistryConfig

    root = tmp_path_factory.mktemp("mlflow-template")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)  # the embedded store
        Registry.open(root, RegistryConfig()).client.search_experiments()
    return embedded_db(root)


@pytest.fixture
def artifacts(tmp_path: Path, empty_store: Path, monkeypatch) -> Path:
    """An artifacts dir with a fresh copy of the empty store; no outside MLflow."""
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "TWEETFLOW_MLFLOW_ARTIFACT_LOCATION",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "mlflow").mkdir()
    shutil.copy(empty_store, tmp_path / "mlflow" / "mlflow.db")
    return tmp_path


def champion_version(artifacts: Path, config) -> str | None:
    from tasks.infra.registry import Registry

    mv = Registry.open(artifacts, config).champion()
    return None if mv is None else str(mv.version)


def version_tags(artifacts: Path, config, version: str) -> dict:
    from tasks.infra.registry import Registry

    return Registry.open(artifacts, config).version(version).tags


def registered_file(artifacts: Path, config, version: str, name: str) -> Path:
    """The file as it sits in the MLflow artifact store (the registered copy)."""
    from tasks.infra.registry import Registry

    source = Registry.open(artifacts, config).version(version).source
    return Path(source.removeprefix("file://")) / "artifacts" / "bundle" / name


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_gate_promotes_a_good_model_and_refuses_a_worse_one(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import promote, register_and_promote
    from tasks.release.tracking import log_run
    from tasks.serving.resolve import resolve_model

    config = RegistryConfig()
    first = register_and_promote(runs["good"], ArtifactStore(artifacts), config)
    assert first.tracked.version == "1"
    assert first.promotion.status == "promoted" and not first.promotion.forced
    assert champion_version(artifacts, config) == "1"
    skipped = {r.name for r in first.decision.rules if r.skipped}
    assert skipped == {"agreement_ari", "silhouette_drop", "coverage_drop"}
    assert "no champion" in first.decision.reason

    info = json.loads((runs["good"] / "run.json").read_text())
    frozen = artifacts / "registry" / "frozen_evaluation.parquet"
    frozen_bytes = frozen.read_bytes()
    evaluation = pd.read_parquet(runs["good"] / "pseudo_labels.parquet")
    assert set(pd.read_parquet(frozen)["tweet_id"]) == set(
        evaluation.loc[evaluation["split"] == "evaluation", "tweet_id"]
    )
    tags = version_tags(artifacts, config, "1")
    assert tags["tweetflow_run_id"] == info["run_id"]
    assert tags["data_snapshot_sha256"] == info["refs"]["raw"]["sha256"]
    assert tags["manifest_sha256"] == info["model_sha256"]
    assert tags["frozen_evaluation_sha256"] == first.decision.frozen_sha256
    assert tags["promotion"] == "promoted"
    assert first.tracked.version_url.endswith(
        "/#/models/tweetflow-classifier/versions/1"
    )
    assert f"/runs/{first.tracked.mlflow_run_id}" in first.tracked.run_url

    # The MLflow run holds params, metrics, reports, the raw snapshot as its
    # dataset, the git commit, and the pyfunc model (with the bundle) under model/.
    from tasks.infra.registry import Registry

    client = Registry.open(artifacts, config).client
    run = client.get_run(first.tracked.mlflow_run_id)
    assert run.data.params["data.snapshot_sha256"] == info["refs"]["raw"]["sha256"]
    assert run.data.params["clustering.k_max"] == "5"
    assert run.data.metrics["silhouette"] == pytest.approx(
        info["metrics"]["silhouette"]
    )
    assert run.data.metrics["counts.accepted"] == info["counts"]["accepted"]
    assert run.data.tags["tweetflow.code_version"] == info["code_version"]
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/MLmodel", "model/mlflow_model_code.py"} <= model_files
    bundle = {
        a.path for a in client.list_artifacts(run.info.run_id, "model/artifacts/bundle")
    }
    assert {
        "model/artifacts/bundle/manifest.json",
        "model/artifacts/bundle/classifier.joblib",
    } <= bundle
    (dataset,) = run.inputs.dataset_inputs
    raw_sha = info["refs"]["raw"]["sha256"]
    assert raw_sha.startswith(dataset.dataset.digest)
    assert json.loads(dataset.dataset.profile)["sha256"] == raw_sha
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == commit
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/report.md", "reports/confusion_matrix.png"} <= reports

    # Registering the same run again (a retried task) reuses its version.
    assert log_run(runs["good"], artifacts, config).version == "1"

    second = register_and_promote(runs["worse"], ArtifactStore(artifacts), config)
    assert second.tracked.version == "2"
    assert second.promotion.status == "rejected"
    assert champion_version(artifacts, config) == "1"
    failed = {r.name for r in second.decision.failed}
    assert {"silhouette_drop", "coverage_drop"} <= failed, second.decision.as_table()
    assert all(name in second.decision.reason for name in failed)
    tags = version_tags(artifacts, config, "2")
    assert tags["promotion"] == "rejected"
    assert "silhouette_drop" in tags["promotion_reason"]
    assert frozen.read_bytes() == frozen_bytes  # frozen once, never rewritten
    assert tags["frozen_evaluation_sha256"] == first.decision.frozen_sha256

    # never leaves the alias alone; force moves it and says so.
    never = promote(artifacts, config, "2", second.decision, mode="never")
    assert never.status == "skipped" and champion_version(artifacts, config) == "1"
    forced = promote(artifacts, config, "2", second.decision, mode="force")
    assert forced.promoted and forced.forced and forced.previous_champion == "1"
    assert champion_version(artifacts, config) == "2"
    tags = version_tags(artifacts, config, "2")
    assert tags["promotion"] == "promoted" and tags["promotion_forced"] == "true"
    assert resolve_model("champion", artifacts, config).version == (
        "tweetflow-classifier/2"
    )


def test_never_registers_without_a_champion(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from tasks.infra.errors import NoChampionError
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import register_and_promote
    from tasks.serving.resolve import resolve_model

    config = RegistryConfig()
    outcome = register_and_promote(
        runs["good"], ArtifactStore(artifacts), config, mode="never"
    )
    assert outcome.promotion.status == "skipped"
    assert version_tags(artifacts, config, "1")["promotion"] == "skipped"
    with pytest.raises(NoChampionError, match="no champion yet: run a retrain first"):
        resolve_model("champion", artifacts, config)
    loaded = resolve_model("tweetflow-classifier/1", artifacts, config)
    assert loaded.version == "tweetflow-classifier/1"


def test_a_tampered_registered_file_is_refused_before_unpickling(
    runs: dict[str, Path], artifacts: Path, monkeypatch
) -> None:
    import joblib

    from tasks.infra.errors import InputError, ModelVerificationError
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import promote, register_and_promote
    from tasks.serving.resolve import resolve_model

    config = RegistryConfig()
    register_and_promote(runs["good"], ArtifactStore(artifacts), config)
    loaded = resolve_model("champion", artifacts, config)
    texts = pd.Series(["my flight was delayed again", "new iphone looks great"])
    assert len(loaded.model.predict(texts)) == 2

    # A damaged local cache is fetched again from the registry and re-checked.
    flip_a_byte(loaded.path / "classifier.joblib")
    assert resolve_model("champion", artifacts, config).version.endswith("/1")

    # A damaged registered file is refused, and nothing gets unpickled.
    def no_unpickling(*args, **kwargs):
        raise AssertionError("unverified file unpickled")

    shutil.rmtree(loaded.path)
    flip_a_byte(registered_file(artifacts, config, "1", "classifier.joblib"))
    with (
        monkeypatch.context() as patch,
        pytest.raises(ModelVerificationError, match="classifier.joblib") as refused,
    ):
        patch.setattr(joblib, "load", no_unpickling)
        resolve_model("champion", artifacts, config)
    assert isinstance(refused.value, InputError)
    assert "\n" not in str(refused.value)

    # A rewritten manifest that matches the tampered file still differs from
    # the registered manifest hash.
    from tasks.infra.store import write_manifest

    manifest = registered_file(artifacts, config, "1", "manifest.json")
    extra = {k: v for k, v in json.loads(manifest.read_text()).items() if k != "files"}
    write_manifest(manifest.parent, extra)
    with pytest.raises(ModelVerificationError, match="manifest_sha256"):
        resolve_model("1", artifacts, config)

    # A damaged champion fails the gate of the next retrain (only force can
    # replace it), and promotion checks the registered files too: a forced
    # promotion of a damaged version is refused and the alias stays.
    second = register_and_promote(
        runs["worse"], ArtifactStore(artifacts), config, mode="never"
    )
    assert "champion_intact" in {r.name for r in second.decision.failed}
    flip_a_byte(registered_file(artifacts, config, "2", "word_vectors.bin"))
    with pytest.raises(ModelVerificationError, match="word_vectors.bin"):
        promote(artifacts, config, "2", second.decision, mode="force")
    assert champion_version(artifacts, config) == "1"
    assert version_tags(artifacts, config, "2")["promotion"] == "rejected"


def test_a_crash_before_the_alias_moves_keeps_the_old_champion(
    runs: dict[str, Path], artifacts: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import register_and_promote

    config = RegistryConfig()
    register_and_promote(runs["good"], ArtifactStore(artifacts), config, mode="force")
    assert champion_version(artifacts, config) == "1"

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the alias moves")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        register_and_promote(
            runs["worse"], ArtifactStore(artifacts), config, mode="force"
        )
    assert champion_version(artifacts, config) == "1"
    assert version_tags(artifacts, config, "2")["promotion"] == "pending"


def test_local_paths_versions_and_bad_specs(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from tasks.infra.errors import NoChampionError, RegistryError
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.serving.resolve import resolve_model

    config = RegistryConfig()
    run_id = json.loads((runs["good"] / "run.json").read_text())["run_id"]
    assert resolve_model(str(runs["good"]), artifacts, config).version == (
        f"path:{run_id}"
    )
    assert resolve_model(str(runs["good"] / "model"), artifacts, config).version == (
        f"path:{run_id}"
    )
    with pytest.raises(RegistryError, match="not 'champion', a version number"):
        resolve_model(str(artifacts / "nowhere"), artifacts, config)
    with pytest.raises(NoChampionError):
        resolve_model("champion", artifacts, config)
    with pytest.raises(RegistryError, match="has no version 7"):
        resolve_model("7", artifacts, config)
    # An artifacts dir without a store: no champion, and no store gets created.
    empty = artifacts / "elsewhere"
    with pytest.raises(NoChampionError):
        resolve_model("champion", empty, config)
    with pytest.raises(RegistryError, match="no model registry"):
        resolve_model("1", empty, config)
    assert not empty.exists()


def test_a_configured_frozen_set_is_used_as_given(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from tasks.infra.errors import RegistryError
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.frozen import frozen_evaluation_set
    from tasks.release.gate import GateConfig, evaluate_gate

    given = tmp_path / "frozen.parquet"
    labels = pd.read_parquet(runs["good"] / "pseudo_labels.parquet")
    labels[["tweet_id", "text"]].head(60).to_parquet(given, index=False)
    config = RegistryConfig(frozen_evaluation=str(given))
    frozen = frozen_evaluation_set(
        ArtifactStore(tmp_path / "art"), config, runs["worse"]
    )
    assert len(frozen.frame) == 60 and not frozen.created
    assert not (tmp_path / "art").exists()
    metrics = json.loads((runs["good"] / "run.json").read_text())["metrics"]
    decision = evaluate_gate(
        runs["good"] / "model", runs["good"] / "model", metrics, frozen, GateConfig()
    )
    rules = {r.name: r for r in decision.rules}
    assert rules["agreement_ari"].value == pytest.approx(1.0)
    assert rules["silhouette_drop"].value == pytest.approx(0.0)
    assert rules["coverage_drop"].passed
    missing = RegistryConfig(frozen_evaluation=str(tmp_path / "missing.parquet"))
    with pytest.raises(RegistryError, match="does not exist"):
        frozen_evaluation_set(ArtifactStore(tmp_path / "art"), missing, runs["good"])


def test_promotion_yaml_holds_the_defaults_and_bad_settings_are_one_line() -> None:
    from tasks.infra.errors import RegistryError
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.config import load_release_config as load_registry_config

    assert load_registry_config(ROOT / "config" / "promotion.yaml") == RegistryConfig()
    with pytest.raises(RegistryError, match="promote"):
        load_registry_config(None, promote="sometimes")
    with pytest.raises(RegistryError, match="gate.min_silhouettes"):
        load_registry_config(None, gate={"min_silhouettes": 0.1})


def test_importing_the_registry_does_no_work() -> None:
    code = (
        "import sys, tasks.infra.registry, tasks.release.promotion, "
        "tasks.release.tracking, tasks.serving.resolve; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_an_identical_bundle_registers_nothing_new(
    runs: dict[str, Path], artifacts: Path, tmp_path: Path
) -> None:
    from tasks.infra.registry import Registry
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import register_and_promote

    config = RegistryConfig()
    first = register_and_promote(runs["good"], ArtifactStore(artifacts), config)
    # Another run folder (another run id) holding the very same model files.
    again = tmp_path / "runs" / "20990101T000000Z-again"
    shutil.copytree(runs["good"], again)
    info = json.loads((again / "run.json").read_text())
    (again / "run.json").write_text(json.dumps({**info, "run_id": again.name}))
    second = register_and_promote(again, ArtifactStore(artifacts), config)
    assert second.tracked.version == first.tracked.version == "1"
    assert second.tracked.identical_to_run == info["run_id"]
    assert second.tracked.mlflow_run_id == first.tracked.mlflow_run_id
    assert "nothing new registered" in second.markdown()
    assert second.promotion.status == "promoted"
    assert second.promotion.reason == "already the champion"
    client = Registry.open(artifacts, config).client
    assert len(client.search_model_versions("name = 'tweetflow-classifier'")) == 1
    assert len(client.search_runs([first.tracked.experiment_id])) == 1


def two_versions(runs: dict[str, Path], artifacts: Path):
    """Version 1 (the good run) and version 2 (the worse one, forced): champion 2."""
    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import register_and_promote

    config = RegistryConfig()
    register_and_promote(runs["good"], ArtifactStore(artifacts), config)
    register_and_promote(runs["worse"], ArtifactStore(artifacts), config, "force")
    return config


def test_the_champion_moves_back_to_an_earlier_version_as_a_tagged_rollback(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from tasks.infra.errors import ModelVerificationError, RegistryError
    from tasks.release.promotion import move_champion

    config = two_versions(runs, artifacts)
    assert champion_version(artifacts, config) == "2"

    back = move_champion(artifacts, config, "tweetflow-classifier/1", "bad week")
    assert back.promoted and back.rollback and back.previous_champion == "2"
    assert champion_version(artifacts, config) == "1"
    tags = version_tags(artifacts, config, "1")
    assert tags["promotion_rollback"] == "true"
    assert tags["previous_champion"] == "2"
    assert tags["promotion_reason"] == "rollback from 2: bad week"
    again = move_champion(artifacts, config, "1")
    assert again.status == "skipped" and again.reason == "already the champion"

    forward = move_champion(artifacts, config, "2")
    assert forward.promoted and not forward.rollback
    assert version_tags(artifacts, config, "2")["promotion_rollback"] == "false"

    # Through the same verified path: a damaged version is refused, alias stays.
    flip_a_byte(registered_file(artifacts, config, "1", "classifier.joblib"))
    with pytest.raises(ModelVerificationError, match="classifier.joblib"):
        move_champion(artifacts, config, "1")
    assert champion_version(artifacts, config) == "2"
    with pytest.raises(RegistryError, match="has no version 7"):
        move_champion(artifacts, config, "7")
    with pytest.raises(RegistryError, match="needs a version number"):
        move_champion(artifacts, config, "latest")


def release_events(name: str, artifacts: Path) -> list[dict]:
    """The events of this name about this artifacts dir, from the Prefect API."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> list[dict]:
        async with get_client() as client:
            reply = await client._client.post(
                "/events/filter", json={"filter": {"event": {"name": [name]}}}
            )
            reply.raise_for_status()
            return reply.json()["events"]

    for _ in range(40):  # events are stored a moment after they are sent
        found = [
            e
            for e in asyncio.run(read())
            if e["payload"].get("artifacts_dir") == str(artifacts)
        ]
        if found:
            return found
        time.sleep(0.5)
    return []


def test_a_gate_refusal_emits_the_rejected_event(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from prefect.events.utilities import emit_event  # noqa: F401 - events client ready

    from tasks.release.config import ReleaseConfig as RegistryConfig
    from tasks.release.promotion import announce, register_and_promote

    config = RegistryConfig()
    register_and_promote(runs["good"], ArtifactStore(artifacts), config)
    worse = register_and_promote(runs["worse"], ArtifactStore(artifacts), config)
    assert worse.promotion.status == "rejected"
    announce(worse, runs["worse"].name, str(artifacts))
    (event,) = release_events("tweetflow.model.rejected", artifacts)
    assert event["payload"]["model_version"] == "tweetflow-classifier/2"
    assert event["payload"]["previous_champion"] == "1"
    assert "silhouette_drop" in event["payload"]["reason"]
    assert release_events("tweetflow.model.promoted", artifacts) == []


def test_promote_command_line_rolls_back_and_emits_the_promotion_event(
    runs: dict[str, Path], artifacts: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    config = two_versions(runs, artifacts)
    api = PREFECT_API_URL.value()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }

    def promote_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows.promote", "--artifacts-dir", str(artifacts)]
            + list(args),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    done = promote_cli("--to", "1", "--reason", "revert")
    assert done.returncode == 0, done.stderr
    assert "champion is now tweetflow-classifier/1 (rollback; was 2)" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert champion_version(artifacts, config) == "1"
    refused = promote_cli("--to", "9")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: model 'tweetflow-classifier' has no version 9"
    ]
    assert champion_version(artifacts, config) == "1"

    events = release_events("tweetflow.model.promoted", artifacts)
    assert [e["payload"]["model_version"] for e in events] == ["tweetflow-classifier/1"]
    assert events[0]["payload"]["rollback"] is True
    assert events[0]["resource"]["prefect.resource.id"] == (
        "tweetflow.model.tweetflow-classifier"
    )
