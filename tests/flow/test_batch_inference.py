"""Batch inference: real model from a real small retrain, real files, the real flow."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import small_params, task_states

pytestmark = pytest.mark.flow

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["tweet_id", "text", "category", "cluster_id", "confidence", "model_version"]


@pytest.fixture(scope="module")
def trained(prefect_api, small_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """A retrain with its own embedded MLflow registry; its model is the champion."""
    from flows.retrain import retrain

    artifacts = tmp_path_factory.mktemp("inference-artifacts")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = small_params(small_csv, artifacts)
        state = retrain(**params.as_flow_kwargs(), return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
        assert result.promotion == "promoted"
        yield artifacts, result


@pytest.fixture(scope="module")
def new_tweets(
    corpus: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    """Real tweets the model has not seen, plus rows that must be set aside."""
    # Corpus ids are derived from the text: distinct texts make distinct tweets.
    distinct = corpus.drop_duplicates("text")
    fresh = distinct.sample(300, random_state=99)[["tweet_id", "text"]].copy()
    bad = pd.DataFrame({"tweet_id": ["empty-1", "blank-1"], "text": ["", "   "]})
    repeat = fresh.head(2)  # exact repeats of two rows
    return pd.concat([fresh, bad, repeat], ignore_index=True)


def run_inference(source: Path | str, output: Path | str, artifacts: Path, **kwargs):
    from flows.batch_inference import batch_inference

    state = batch_inference(
        source=str(source),
        output=str(output),
        artifacts_dir=str(artifacts),
        return_state=True,
        **kwargs,
    )
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id


def test_generic_csv_gets_predictions_for_every_usable_tweet(
    trained, new_tweets: pd.DataFrame, tmp_path: Path
) -> None:
    artifacts, retrained = trained
    source = tmp_path / "new.csv"
    new_tweets.to_csv(source, index=False, quoting=csv.QUOTE_ALL)
    output = tmp_path / "out" / "predictions.parquet"
    result, flow_run_id = run_inference(source, output, artifacts)

    predictions = pd.read_parquet(output)
    assert list(predictions.columns) == COLUMNS
    assert len(predictions) == 300 and predictions["tweet_id"].is_unique
    assert set(predictions["model_version"]) == {retrained.model_version}
    assert set(predictions["category"]) <= set(retrained.categories.values())
    assert predictions["confidence"].between(0, 1).all()
    counts = result.counts
    assert counts == {
        "rows_read": 304,
        "outbound_skipped": 0,
        "predicted": 300,
        "quarantined": 2,
        "duplicates_removed": 2,
        "no_known_words": counts["no_known_words"],
    }
    quarantine = pd.read_parquet(tmp_path / "out" / "predictions.quarantine.parquet")
    reasons = dict(zip(quarantine["tweet_id"], quarantine["reason"]))
    # A missing text fails the raw contract; spaces only are empty once cleaned.
    assert reasons == {
        "empty-1": "text: not_nullable",
        "blank-1": "text is empty after cleaning",
    }
    # The same preparation as training: what the model saw is the cleaned text.
    from tasks.ml.cleaning import clean_text

    expected = clean_text(new_tweets.drop_duplicates("tweet_id")["text"]).iloc[:300]
    assert predictions["text"].tolist() == expected.tolist()

    from prefect.client.orchestration import get_client

    assert set(task_states(flow_run_id).values()) == {"Completed"}
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts()}
    assert "batch-inference-summary" in keys


def test_customer_support_schema_classifies_inbound_tweets_only(
    trained, corpus: pd.DataFrame, tmp_path: Path
) -> None:
    artifacts, _ = trained
    sample = corpus.drop_duplicates("text").sample(40, random_state=5)
    sample = sample.reset_index(drop=True)
    inbound = sample.index % 4 != 0  # every fourth row is a company's reply
    frame = pd.DataFrame(
        {
            "tweet_id": [str(1000 + i) for i in range(len(sample))],
            "author_id": [
                "sprintcare" if not ok else f"cust{i}" for i, ok in enumerate(inbound)
            ],
            "inbound": ["True" if ok else "False" for ok in inbound],
            "created_at": "Tue Oct 31 22:10:47 +0000 2017",
            "text": sample["text"],
            "response_tweet_id": "",
            "in_response_to_tweet_id": "",
        }
    )
    source = tmp_path / "twcs.csv"
    frame.to_csv(source, index=False, quoting=csv.QUOTE_ALL)
    output = tmp_path / "twcs-predictions.parquet"
    result, _ = run_inference(source, output, artifacts)
    predictions = pd.read_parquet(output)
    assert result.counts["outbound_skipped"] == int((~inbound).sum())
    assert sorted(predictions["tweet_id"]) == sorted(
        frame.loc[inbound, "tweet_id"].tolist()
    )


def test_a_model_path_and_a_version_number_can_be_chosen(
    trained, small_csv: Path, tmp_path: Path
) -> None:
    artifacts, retrained = trained
    model_dir = Path(retrained.run_dir) / "model"
    by_path, _ = run_inference(
        small_csv, tmp_path / "a.parquet", artifacts, model=str(model_dir)
    )
    assert by_path.model_version == f"path:{retrained.run_id}"
    number = retrained.model_version.rsplit("/", 1)[1]
    by_version, _ = run_inference(
        small_csv, tmp_path / "b.parquet", artifacts, model=number
    )
    assert by_version.model_version == retrained.model_version
    a = pd.read_parquet(tmp_path / "a.parquet")
    b = pd.read_parquet(tmp_path / "b.parquet")
    assert a.drop(columns="model_version").equals(b.drop(columns="model_version"))


def cli(
    *args: str, cwd: Path = ROOT, env_drop: tuple[str, ...] = ("MLFLOW_TRACKING_URI",)
):
    import os

    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return subprocess.run(
        [sys.executable, "-m", "flows.batch_inference", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_tampered_model_is_refused_with_one_line(
    trained, small_csv: Path, tmp_path: Path
) -> None:
    artifacts, retrained = trained
    tampered = tmp_path / "model"
    shutil.copytree(Path(retrained.run_dir) / "model", tampered)
    classifier = tampered / "classifier.joblib"
    data = bytearray(classifier.read_bytes())
    data[len(data) // 2] ^= 0xFF
    classifier.write_bytes(bytes(data))
    done = cli(
        "--source", str(small_csv), "--output", str(tmp_path / "p.parquet"),
        "--model", str(tampered), "--artifacts-dir", str(artifacts),
    )  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sha256" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "/nonexistent/tweets.csv"], "does not exist"),
        (["--output", "predictions.csv"], "must name a .parquet file"),
        (
            ["--model", "champion", "--artifacts-dir", "/nonexistent/store"],
            "no champion",
        ),
        (["--model", "/nonexistent/model"], "is not 'champion', a version number"),
    ],
)
def test_bad_input_is_one_error_line(
    args: list[str], message: str, small_csv: Path, tmp_path: Path
) -> None:
    base = {"--source": str(small_csv), "--output": str(tmp_path / "p.parquet")}
    pairs = dict(zip(args[::2], args[1::2]))
    merged = [x for k, v in {**base, **pairs}.items() for x in (k, v)]
    done = cli(*merged)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_mlflow_ui_script_serves_the_embedded_registry(trained) -> None:
    """``make mlflow-ui`` runs deployments/mlflow_ui.sh: the UI on the run's store."""
    import json
    import os
    import time
    import urllib.request

    from tests.servers import BIN, free_port, stop

    artifacts, retrained = trained
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / "deployments" / "mlflow_ui.sh"), str(artifacts)],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            "MLFLOW_PORT": str(port),
            "TWEETFLOW_BIN": str(BIN),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, answered = time.monotonic() + 90, False
        while not answered and time.monotonic() < deadline:
            assert proc.poll() is None, "mlflow_ui.sh exited"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    answered = r.status == 200
            except OSError:
                time.sleep(0.5)
        assert answered, "the MLflow UI did not answer"
        with urllib.request.urlopen(f"{base}/", timeout=10) as page:
            assert b"<html" in page.read().lower()
        name, version = retrained.model_version.split("/")
        url = (
            f"{base}/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion"
        )
        with urllib.request.urlopen(url, timeout=10) as r:
            assert json.load(r)["model_version"]["version"] == version
    finally:
        stop(proc)


def test_classifying_in_chunks_equals_classifying_in_one_piece(
    trained, new_tweets: pd.DataFrame, tmp_path: Path, monkeypatch
) -> None:
    """Conflicting ids, exact repeats and empty texts fall in different chunks;
    the chunked path (bounded memory) gives the one-piece path's every row, and
    its progress counts each row once."""
    from data_contracts import empty_quarantine
    from tasks.infra.progress import Progress
    from tasks.infra.store import ArtifactStore
    from tasks.ml.cleaning import CleaningConfig
    from tasks.serving import inference
    from tasks.serving.model import TweetClassifier
    from tasks.stages.ingestion import IngestionConfig, ingest_frame

    artifacts, retrained = trained
    model = TweetClassifier.load(Path(retrained.local_run_dir) / "model")
    fresh = new_tweets.iloc[:300]
    rows = pd.concat(
        [
            fresh.iloc[:40],
            pd.DataFrame({"tweet_id": ["c1", "blank-2"], "text": ["first", "  "]}),
            fresh.iloc[40:80],
            fresh.iloc[[3, 5]],  # exact repeats, chunks after their originals
            pd.DataFrame({"tweet_id": ["c1"], "text": ["a different text"]}),
            fresh.iloc[80:120],
        ],
        ignore_index=True,
    )
    source = tmp_path / "mixed.csv"
    rows.to_csv(source, index=False, quoting=csv.QUOTE_ALL)
    raw = ingest_frame(str(source), IngestionConfig()).raw
    whole = inference.classify_frame(raw, model, "v")

    monkeypatch.setattr(inference, "CHUNK_ROWS", 7)
    store = ArtifactStore(tmp_path / "store")
    output = tmp_path / "chunked.parquet"
    with Progress("classify", "x", 1, every=60) as progress:
        advanced: list[float] = []
        progress.advance = advanced.append  # type: ignore[method-assign]
        summary = inference.classify_raw(
            store,
            store.put_frame(raw, "ingestion", "raw"),
            empty_quarantine(),  # ingestion set nothing aside
            len(raw),
            0,
            str(output),
            model,
            "v",
            CleaningConfig(),
        )
    # Every row read is counted once as done: the bar is not full halfway.
    assert progress.total == len(raw) and sum(advanced) == len(raw)
    chunked = pd.read_parquet(output)
    assert chunked.equals(whole.predictions.reset_index(drop=True))
    quarantine = pd.read_parquet(inference.quarantine_uri(str(output)))
    assert quarantine.equals(whole.quarantine.reset_index(drop=True))
    assert set(quarantine["reason"]) == {
        "text is empty after cleaning",
        "tweet_id repeated with a different text",
    }
    assert summary["counts"]["duplicates_removed"] == whole.duplicates_removed == 2
    assert summary["counts"]["predicted"] == len(whole.predictions) == 120


def test_the_champion_loads_as_an_mlflow_pyfunc_model_with_batch_inference_categories(
    trained, new_tweets: pd.DataFrame, tmp_path: Path, monkeypatch
) -> None:
    import json

    import mlflow

    from tasks.infra.errors import ModelVerificationError
    from tasks.infra.registry import Registry
    from tasks.infra.store import write_manifest
    from tasks.release.config import ReleaseConfig

    artifacts, retrained = trained
    source = tmp_path / "new.csv"
    new_tweets.to_csv(source, index=False, quoting=csv.QUOTE_ALL)
    output = tmp_path / "predictions.parquet"
    run_inference(source, output, artifacts)
    batch = pd.read_parquet(output)
    texts = new_tweets.drop_duplicates("tweet_id").set_index("tweet_id")["text"]

    reg = Registry.open(artifacts, ReleaseConfig())
    # As a user would point MLflow at the store (the environment, restored after:
    # mlflow.set_tracking_uri would leak into every later test of the session).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", reg.tracking_uri)
    uri = "models:/tweetflow-classifier@champion"
    model = mlflow.pyfunc.load_model(uri)
    inputs = model.metadata.get_input_schema().input_names()
    outputs = model.metadata.get_output_schema().input_names()
    assert inputs == ["text"]
    assert outputs == ["category", "cluster_id", "confidence"]
    predicted = model.predict(pd.DataFrame({"text": texts[batch["tweet_id"]].values}))
    assert len(predicted) == len(batch)
    assert predicted["category"].tolist() == batch["category"].tolist()
    assert predicted["cluster_id"].tolist() == batch["cluster_id"].tolist()
    assert predicted["confidence"].to_numpy() == pytest.approx(
        batch["confidence"].to_numpy(), abs=1e-6
    )

    # The pyfunc path verifies the bundle too: a damaged file, or a manifest
    # rewritten to match it, is refused before anything is unpickled.
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    bundle = local / "artifacts" / "bundle"
    data = bytearray((bundle / "classifier.joblib").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "classifier.joblib").write_bytes(bytes(data))
    with pytest.raises(ModelVerificationError, match="classifier.joblib"):
        mlflow.pyfunc.load_model(str(local))
    manifest = json.loads((bundle / "manifest.json").read_text())
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(ModelVerificationError, match="manifest_sha256"):
        mlflow.pyfunc.load_model(str(local))
