"""Flow tests: the real retrain flow on a few hundred real tweets, against a
temporary Prefect API, checking caching, retries, quarantine and outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.infra.caching import stage_task
from tests.conftest import STAGES, small_params
from tests.conftest import run_retrain as run

pytestmark = pytest.mark.flow


def test_first_run_executes_every_stage_and_writes_outputs(
    first_run,
) -> None:
    artifacts, result, states = first_run
    assert set(states) == STAGES
    assert set(states.values()) == {"Completed"}
    assert result.model_version.startswith("tweetflow-classifier/")
    assert result.promotion in {"promoted", "rejected"}
    run_dir = artifacts / "runs" / result.run_id
    assert (artifacts / "LATEST").read_text().strip() == result.run_id
    for name in [
        "pseudo_labels.parquet",
        "metrics.json",
        "report.md",
        "quarantine.parquet",
        "cluster_report.md",
        "clusters_2d.png",
        "confusion_matrix.png",
        "model/manifest.json",
    ]:
        assert (run_dir / name).is_file(), name
    labels = pd.read_parquet(run_dir / "pseudo_labels.parquet")
    assert list(labels.columns) == [
        "tweet_id",
        "split",
        "text",
        "cluster_id",
        "category",
    ]
    assert len(labels) == result.counts["accepted"]
    assert labels["tweet_id"].is_unique
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["k"] == result.k >= 2
    assert 0.0 <= metrics["evaluation_accuracy"] <= 1.0
    assert "## Categories" in (run_dir / "report.md").read_text()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts()}
        [report] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["retrain-report"])
            ),
            limit=1,
        ) or [None]
    assert {
        "retrain-report",
        "retrain-metrics",
        "retrain-clusters",
        "retrain-gate",
    } <= keys
    # The report links the MLflow run and the registered model version.
    registry = json.loads((run_dir / "registry.json").read_text())
    assert registry["model_version"] == result.model_version
    assert registry["mlflow_run_id"] and registry["gate"]
    assert "## Registry" in report.data and "MLflow run" in report.data


def run_artifacts(run_id: str) -> dict:
    """The report and link artifacts of one retrain, by key (newest first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    keys = ["retrain-report", *LINKS]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)),
            sort=ArtifactSort.CREATED_DESC,
        )
    mine: dict = {}
    for artifact in found:
        if (artifact.description or "").startswith(f"tweetflow retrain {run_id}:") or (
            artifact.key == "retrain-report"
            and (artifact.description or "").startswith(f"unchanged since {run_id}:")
        ):
            mine.setdefault(artifact.key, artifact)
    return mine


LINKS = ["retrain-mlflow-run", "retrain-model-version", "retrain-run-folder"]


def link_of(artifact) -> str:
    """The address of a link artifact (stored as a markdown link)."""
    import re

    [url] = re.findall(r"\]\((.+)\)$", artifact.data)
    return url


def test_the_prefect_report_shows_its_plots_and_links_the_run(first_run) -> None:
    import base64
    import io
    import re

    from PIL import Image

    _, result, _ = first_run
    run_dir = Path(result.local_run_dir)
    registry = json.loads((run_dir / "registry.json").read_text())
    found = run_artifacts(result.run_id)
    report = found["retrain-report"].data
    images = re.findall(
        r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", report
    )
    assert {alt for alt, _ in images} == {
        "criterion per k",
        "clusters",
        "confusion matrix",
    }
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width > 300
    assert ".png)" not in report  # no link the UI cannot follow
    # The plots stay in the run folder, named by category.
    for name in ["clusters_2d.png", "confusion_matrix.png", "k_selection.png"]:
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG"
    assert {key: link_of(found[key]) for key in LINKS} == {
        "retrain-mlflow-run": registry["mlflow_run_url"],
        "retrain-model-version": registry["model_version_url"],
        "retrain-run-folder": run_dir.resolve().as_uri(),
    }
    assert registry["mlflow_run_url"].startswith("http://127.0.0.1:5000/#/experiments/")
    assert registry["mlflow_run_url"].endswith(registry["mlflow_run_id"])
    assert registry["model_version_url"].endswith(
        "/#/models/tweetflow-classifier/versions/"
        + result.model_version.rsplit("/", 1)[1]
    )


def progress_bars(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def test_a_long_step_shows_a_progress_bar_that_ends_full(prefect_api) -> None:
    """A step that outlasts the report interval gets a UI bar, moved while it
    runs and full at the end; its task log has the report lines."""
    import time

    from prefect import flow, task

    from tasks.infra.progress import Progress

    @task(name="slow-step")
    def slow_step() -> list[float]:
        seen = []
        with Progress("slow-step", "waiting", 4, every=0.1) as progress:
            for i in range(4):
                time.sleep(0.25)
                progress.update(i + 1)
                seen.append(progress.fraction)
        return seen

    @flow(name="progress-under-test")
    def run_it() -> list[float]:
        return slow_step()

    assert run_it() == [0.25, 0.5, 0.75, 1.0]
    bars = progress_bars("slow-step-progress")
    assert len(bars) == 1 and bars[0].type == "progress"
    assert float(bars[0].data) == 100.0


def test_a_quick_step_gets_no_progress_bar(prefect_api) -> None:
    """A step that ends before its first report leaves no clutter in the UI."""
    from prefect import flow, task

    from tasks.infra.progress import Progress

    @task(name="quick-step")
    def quick_step() -> float:
        with Progress("quick-step", "counting", 4, every=60.0) as progress:
            for i in range(4):
                progress.update(i + 1)
        return progress.fraction

    @flow(name="quick-progress-under-test")
    def run_it() -> float:
        return quick_step()

    assert run_it() == 1.0
    assert progress_bars("quick-step-progress") == []


def test_second_run_is_fully_cached(first_run, small_csv: Path) -> None:
    artifacts, first, _ = first_run
    runs_before = sorted(p.name for p in (artifacts / "runs").iterdir())
    latest = (artifacts / "LATEST").read_text().strip()
    result, states = run(small_params(small_csv, artifacts))
    assert set(states) == STAGES
    assert set(states.values()) == {"Cached"}, states
    assert result.metrics == first.metrics
    assert result.categories == first.categories
    # Nothing changed: the run says so and publishes nor registers anything new.
    assert result.unchanged and result.run_id == latest
    assert (artifacts / "LATEST").read_text().strip() == latest
    # Its report says so; its links are the kept run's.
    registry = json.loads((artifacts / "runs" / latest / "registry.json").read_text())
    found = run_artifacts(latest)
    assert "unchanged" in found["retrain-report"].data
    for key in LINKS:  # made by this run, after its report
        assert found[key].created >= found["retrain-report"].created, key
    assert link_of(found["retrain-model-version"]) == registry["model_version_url"]
    assert link_of(found["retrain-mlflow-run"]) == registry["mlflow_run_url"]
    assert sorted(p.name for p in (artifacts / "runs").iterdir()) == runs_before


def test_an_unchanged_run_publishes_nothing_unless_promotion_is_forced(
    prefect_api, small_csv: Path, tmp_path: Path
) -> None:
    first, _ = run(small_params(small_csv, tmp_path))
    quiet, states = run(small_params(small_csv, tmp_path, log_level="DEBUG"))
    assert quiet.unchanged and quiet.run_id == first.run_id  # log level aside
    assert quiet.model_version == first.model_version
    assert set(states.values()) == {"Cached"}
    from tasks.infra.registry import Registry
    from tasks.release.config import ReleaseConfig

    reg = Registry.open(tmp_path, ReleaseConfig())  # the session's MLflow store

    def versions() -> int:
        return len(reg.client.search_model_versions(f"name = '{reg.name}'"))

    before = versions()
    forced, _ = run(small_params(small_csv, tmp_path, promote="force"))
    assert not forced.unchanged and forced.run_id != first.run_id
    assert forced.promotion == "promoted"
    assert (tmp_path / "LATEST").read_text().strip() == forced.run_id
    # Its model is byte-identical to the first run's: no new version.
    assert forced.model_version == first.model_version
    assert forced.identical_to_run in {first.run_id, first.identical_to_run}
    assert "nothing new registered" in forced.promotion_reason
    assert versions() == before
    changed, _ = run(small_params(small_csv, tmp_path, training={"C": 0.5}))
    assert not changed.unchanged and changed.run_id != forced.run_id
    assert changed.model_version != first.model_version
    assert changed.identical_to_run is None


@pytest.mark.parametrize(
    ("changes", "expected_reruns"),
    [
        pytest.param({"training": {"C": 0.25}}, {"training"}, id="training-only"),
        pytest.param(
            {"clustering": {"n_clusters": 3}},
            {"clustering", "categories", "training"},
            id="clustering-and-downstream",
        ),
        pytest.param(
            {"categories": {"carry_over_share": 0.8}},
            {"categories"},  # names only: KMeans and the classifier stay cached
            id="naming-only",
        ),
    ],
)
def test_a_changed_setting_reruns_only_its_stage_and_downstream(
    first_run, small_csv: Path, changes: dict, expected_reruns: set[str]
) -> None:
    artifacts, _, _ = first_run
    _, states = run(small_params(small_csv, artifacts, **changes))
    rerun = {name for name, state in states.items() if state != "Cached"}
    assert rerun == expected_reruns, states


def test_transient_storage_error_is_retried(
    prefect_api, small_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    from tasks.infra.caching import TransientStorageError
    from tasks.infra.store import FrameWriter

    original = FrameWriter.close  # every stored frame is committed here
    failures = {"preprocessing": 1}

    def flaky(self, *args, **kwargs):
        if failures.get(self.stage):
            failures[self.stage] -= 1
            raise TransientStorageError(f"simulated 503 writing {self.stage}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FrameWriter, "close", flaky)
    from flows.retrain import retrain

    state = retrain(
        **small_params(small_csv, tmp_path).as_flow_kwargs(), return_state=True
    )
    assert state.is_completed(), state.message
    assert failures["preprocessing"] == 0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    attempts = {r.name.rsplit("-", 1)[0]: r.run_count for r in runs}
    assert attempts["preprocessing"] == 2
    assert attempts["preparation"] == 1


def test_programming_errors_are_not_retried(
    prefect_api, small_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    import tasks.stages.training as training

    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise ValueError("a bug, not a flaky disk")

    monkeypatch.setattr(training, "train_and_evaluate", broken)
    from flows.retrain import retrain

    state = retrain(
        **small_params(small_csv, tmp_path).as_flow_kwargs(), return_state=True
    )
    assert state.is_failed()
    assert calls["n"] == 1
    assert not (tmp_path / "LATEST").exists()


def test_quarantine_counts_add_up(
    prefect_api, corpus: pd.DataFrame, tmp_path: Path
) -> None:
    tweets = corpus.sample(300, random_state=11)[["tweet_id", "text"]].reset_index(
        drop=True
    )
    bad = pd.DataFrame(
        {
            "tweet_id": ["e1", "e2", "d1", tweets.loc[0, "tweet_id"], "long"],
            "text": [
                "",
                "   ",
                tweets.loc[1, "text"],
                "a different text for a known id",
                "x" * 2500,
            ],
        }
    )
    source = tmp_path / "mixed.csv"
    pd.concat([tweets, bad], ignore_index=True).to_csv(
        source, index=False, quoting=csv.QUOTE_ALL
    )
    result, _ = run(small_params(source, tmp_path / "artifacts"))
    counts = result.counts
    assert counts["rows_read"] == 305
    assert (
        counts["accepted"] + counts["quarantined"] + counts["duplicates_removed"] == 305
    )
    quarantine = pd.read_parquet(Path(result.run_dir) / "quarantine.parquet")
    assert len(quarantine) == counts["quarantined"] == 5
    assert quarantine["reason"].value_counts().to_dict() == {
        "tweet_id repeated with a different text": 2,
        "text: not_nullable": 1,  # an empty CSV field reads as missing
        "text is empty after cleaning": 1,
        "text longer than 2000 characters": 1,
    }
    assert set(quarantine["stage"]) == {"ingestion", "preparation"}
    duplicated_in_sample = int(tweets["text"].duplicated().sum())
    assert counts["duplicates_removed"] == 1 + duplicated_in_sample


def test_model_bundle_is_invariant_to_swapped_urls_and_mentions(
    first_run,
) -> None:
    from tasks.serving.model import TweetClassifier

    artifacts, result, _ = first_run
    model = TweetClassifier.load(Path(result.run_dir) / "model")
    labels = pd.read_parquet(Path(result.run_dir) / "pseudo_labels.parquet")
    texts = labels["text"].head(100)
    swapped = texts.str.replace(r"https?://\S+", "http://t.co/Zz9Yy8Xx", regex=True)
    swapped = swapped.str.replace(
        r"@(?!united|americanair|usairways|southwestair|jetblue|virginamerica|apple)\w+",
        "@someone_else",
        regex=True,
    )
    before = model.predict(texts)["category"]
    after = model.predict(swapped)["category"]
    assert (before == after).mean() >= 0.97


def test_contract_violation_fails_the_flow_with_a_readable_message(
    prefect_api, small_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    import tasks.stages.preprocessing as preprocessing
    from data_contracts import ContractViolation

    original = preprocessing.preprocess_frame

    def broken(prepared, config):
        frame = original(prepared, config)
        frame.loc[frame.index[:3], "split"] = "training"
        return frame

    monkeypatch.setattr(preprocessing, "preprocess_frame", broken)
    from flows.retrain import retrain

    state = retrain(
        **small_params(small_csv, tmp_path).as_flow_kwargs(), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ContractViolation) as info:
        state.result()
    message = str(info.value)
    assert (
        "'preprocessing'" in message
        and "'split'" in message
        and "'training'" in message
    )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    keys = {a.key for a in artifact}
    assert "contract-violation-preprocessing" in keys


def flow_run_logs(flow_run_id) -> list[tuple[int, str]]:
    """(level, message) of every log line the API holds for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [(log.level, log.message) for log in logs]


def test_log_level_sets_the_run_verbosity(
    prefect_api, small_csv: Path, tmp_path: Path
) -> None:
    from flows.retrain import retrain

    verbose = retrain(
        **small_params(small_csv, tmp_path, log_level="DEBUG").as_flow_kwargs(),
        return_state=True,
    )
    logs = flow_run_logs(verbose.state_details.flow_run_id)
    messages = " ".join(m for _, m in logs)
    for stage in [
        "ingestion: read",
        "preparation:",
        "preprocessing:",
        "features:",
        "clustering:",
        "training:",
    ]:
        assert stage in messages, stage
    assert "rows in" in messages and "accepted" in messages
    assert any(level == 10 and "merge-cost ratio per k" in m for level, m in logs)

    quiet = retrain(
        **small_params(small_csv, tmp_path, log_level="WARNING").as_flow_kwargs(),
        return_state=True,
    )
    quiet_logs = flow_run_logs(quiet.state_details.flow_run_id)
    # Only the engine's lines from before the flow body applied the level remain.
    below_warning = [m for level, m in quiet_logs if level < 30]
    assert not [m for m in below_warning if ":" in m and "rows" in m], below_warning
    assert len(below_warning) <= 3, below_warning


def test_deleted_artifacts_are_rebuilt_not_served_stale(
    prefect_api, small_csv: Path, tmp_path: Path
) -> None:
    import shutil

    run(small_params(small_csv, tmp_path))
    shutil.rmtree(tmp_path / "data" / "features")
    result, states = run(small_params(small_csv, tmp_path))
    assert states["features"] == "Completed"
    assert states["preprocessing"] == "Cached"
    assert Path(result.run_dir, "pseudo_labels.parquet").is_file()


def test_tampered_model_bundle_is_refused_before_unpickling(
    first_run, tmp_path: Path
) -> None:
    import shutil

    from tasks.infra.errors import ModelVerificationError
    from tasks.serving.model import TweetClassifier

    _, result, _ = first_run
    bundle = tmp_path / "model"
    shutil.copytree(Path(result.run_dir) / "model", bundle)
    with open(bundle / "classifier.joblib", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(ModelVerificationError, match="classifier.joblib"):
        TweetClassifier.load(bundle)


def test_two_cold_runs_produce_identical_artifacts(
    prefect_api, small_csv: Path, tmp_path: Path
) -> None:
    first, _ = run(small_params(small_csv, tmp_path / "one"))
    second, _ = run(small_params(small_csv, tmp_path / "two"))
    info = [
        json.loads(Path(r.run_dir, "run.json").read_text()) for r in (first, second)
    ]
    for name in [
        "raw",
        "prepared",
        "preprocessed",
        "features",
        "assignments",
        "pseudo_labels",
    ]:
        assert info[0]["refs"][name]["sha256"] == info[1]["refs"][name]["sha256"], name
    assert first.metrics == second.metrics


def test_crash_while_publishing_leaves_latest_on_the_last_complete_run(
    prefect_api, small_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    import tasks.release.publishing as publishing

    done, _ = run(small_params(small_csv, tmp_path))

    def crash(*args, **kwargs):
        raise OSError("disk full while copying the model")

    monkeypatch.setattr(publishing, "build_bundle", crash)
    from flows.retrain import retrain

    state = retrain(
        **small_params(small_csv, tmp_path, training={"C": 2.0}).as_flow_kwargs(),
        return_state=True,
    )
    assert state.is_failed()
    assert (tmp_path / "LATEST").read_text().strip() == done.run_id
    complete = [
        p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")
    ]
    assert complete == [done.run_id]


@pytest.mark.parametrize(
    ("method", "stage", "before"),
    [
        ("frame_writer", "features", ["ingestion", "preparation", "preprocessing"]),
        (
            "commit_dir",
            "training",
            ["ingestion", "preparation", "preprocessing", "features", "clustering"],
        ),
    ],
)
def test_a_rerun_after_a_crash_resumes_from_the_cached_stages(
    prefect_api,
    small_csv: Path,
    tmp_path: Path,
    first_run,
    method: str,
    stage: str,
    before: list[str],
) -> None:
    """A crash while a stage writes its output; the rerun reuses every stage that
    finished, recomputes the rest, and ends with the outputs of a clean run."""
    from flows.retrain import retrain
    from tasks.infra.store import ArtifactStore

    original = getattr(ArtifactStore, method)

    def crash(self, *args, **kwargs):
        if stage in args[:2]:  # (stage, ...) or (frame or folder, stage, ...)
            raise RuntimeError(f"machine lost while writing {stage}")
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ArtifactStore, method, crash)
        state = retrain(
            **small_params(small_csv, tmp_path).as_flow_kwargs(), return_state=True
        )
    assert state.is_failed()
    assert not (tmp_path / "LATEST").exists()

    result, states = run(small_params(small_csv, tmp_path))
    assert {s: states[s] for s in before} == dict.fromkeys(before, "Cached")
    assert states[stage] == "Completed"
    _, clean, _ = first_run
    ours = json.loads(Path(result.run_dir, "run.json").read_text())
    theirs = json.loads(Path(clean.run_dir, "run.json").read_text())
    for name in ["raw", "prepared", "features", "assignments", "pseudo_labels"]:
        assert ours["refs"][name]["sha256"] == theirs["refs"][name]["sha256"], name
    assert ours["model_sha256"] == theirs["model_sha256"]


@stage_task("doubling")
def doubling(x: int) -> int:
    """A cached step for the runner's test."""
    return 2 * x


def test_the_runner_names_computed_steps_only(prefect_api, tmp_path: Path) -> None:
    """``on_compute`` hears of the steps that ran, never of one served from
    cache (a warm run starts no background work)."""
    from prefect import flow, get_run_logger

    from tasks.infra.caching import StageRunner

    heard: list[str] = []

    @flow(name="runner-under-test")
    def steps() -> list[int]:
        run = StageRunner(str(tmp_path), "local", get_run_logger(), heard.append)
        return [run("first", doubling, 2), run("again", doubling, 2)]

    assert steps() == [4, 4]
    assert heard == ["first"]
    assert steps() == [4, 4]
    assert heard == ["first"]  # the second flow run reused both
