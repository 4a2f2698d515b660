"""The ECS worker submits a retrain run as AWS would see it (moto stands in for AWS).

Real components only: a Prefect server, the pool built from
``deployments/ecs-base-job-template.json`` and the production deployments from
``prefect.yaml``, both registered as deploy.yml does (``deployments/embedded.sh
deploy ecs``), ``prefect deployment run`` and ``prefect worker start --type ecs --run-once``. moto
records the task definition and the RunTask call; it never pulls the image or starts
the container, so the flow run stays Pending: what happens inside the task (image
pull, IAM roles, networking to the Prefect API, logs) is not covered here.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from deployments.environments import deployment_names
from tasks.infra.cluster import ADDRESS_ENV
from tests.aws import ACCOUNT, REGION, aws_env, client, moto_server
from tests.servers import BIN, REPO, prefect, prefect_server

TEMPLATE = REPO / "deployments" / "ecs-base-job-template.json"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/tweetflow:sha-0123456789ab"
TASK_ROLE = f"arn:aws:iam::{ACCOUNT}:role/tweetflow-task"
EXECUTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/tweetflow-execution"
DASK_SCHEDULER = "tcp://10.0.3.7:8786"
CLUSTER = "tweetflow"
FAMILY = "tweetflow-retrain"
CPU, MEMORY = 2048, 8192
WORKER_TIMEOUT = 120
RUN_TAG = "prefect.io/flow-run-id"


def tags(task: dict) -> dict[str, str]:
    """An ECS task's tags as a mapping."""
    return {tag["key"]: tag["value"] for tag in task.get("tags", [])}


def api(env: dict[str, str], path: str) -> dict:
    """GET ``path`` from the Prefect REST API; the decoded JSON answer."""
    url = env["PREFECT_API_URL"] + path
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def api_post(env: dict[str, str], path: str) -> list[dict]:
    """POST an empty filter to ``path`` of the Prefect REST API; the decoded list."""
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def stack(tmp_path: Path):
    """A Prefect server and a moto server with the `tweetflow` cluster, both on loopback."""
    with prefect_server(tmp_path) as env, moto_server(tmp_path / "aws") as aws:
        client("ecs", aws).create_cluster(clusterName=CLUSTER)
        yield aws_env(env, aws), aws


def test_template_is_the_prefect_aws_default_plus_container_size():
    """The pool template tracks the installed prefect-aws; only the intended edits differ.

    Container-level cpu and memory: moto's RunTask fails on a task definition
    without container memory, and on AWS they are harmless (equal to the task's).
    """
    from prefect_aws.workers.ecs_worker import ECSWorker

    ours = json.loads(TEMPLATE.read_text())
    default = ECSWorker.get_default_base_job_template()
    [container] = ours["job_configuration"]["task_definition"]["containerDefinitions"]
    assert container == {
        "image": "{{ image }}",
        "name": "{{ container_name }}",
        "cpu": "{{ cpu }}",
        "memory": "{{ memory }}",
        "essential": True,
    }
    ours["job_configuration"]["task_definition"]["containerDefinitions"] = default[
        "job_configuration"
    ]["task_definition"]["containerDefinitions"]
    assert ours["job_configuration"] == default["job_configuration"]

    defaults = {
        name: spec.get("default")
        for name, spec in ours["variables"]["properties"].items()
    }
    assert defaults["cluster"] == CLUSTER
    assert defaults["family"] == FAMILY
    assert defaults["container_name"] == "prefect"
    assert (defaults["cpu"], defaults["memory"]) == (CPU, MEMORY)
    for name in ("cluster", "family", "container_name", "cpu", "memory"):
        ours["variables"]["properties"][name]["default"] = default["variables"][
            "properties"
        ][name].get("default")
    assert ours["variables"] == default["variables"]


@pytest.mark.e2e
def test_worker_registers_task_definition_and_runs_task(stack):
    env, aws = stack
    deploy_env = {
        **env,
        "TWEETFLOW_BIN": str(BIN),
        "TWEETFLOW_IMAGE": IMAGE,
        "TWEETFLOW_TASK_ROLE_ARN": TASK_ROLE,
        "TWEETFLOW_EXECUTION_ROLE_ARN": EXECUTION_ROLE,
        "TWEETFLOW_DASK_ADDRESS": DASK_SCHEDULER,
    }
    deployed = subprocess.run(
        [str(REPO / "deployments" / "embedded.sh"), "deploy", "ecs"],
        env=deploy_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    # Production carries its own pool and deployments only, the weekly schedule active.
    pools = [p["name"] for p in api_post(env, "/work_pools/filter")]
    assert pools == ["tweetflow-ecs"]
    found = {d["name"]: d for d in api_post(env, "/deployments/filter")}
    assert set(found) == {name.split("/")[1] for name in deployment_names("ecs")}
    assert {d["work_pool_name"] for d in found.values()} == {"tweetflow-ecs"}
    [schedule] = found["weekly-ecs"]["schedules"]
    assert schedule["active"] and schedule["schedule"]["cron"] == "0 3 * * 1"

    started = prefect(
        "deployment", "run", "retrain/weekly-ecs", "--param", "log_level=DEBUG",
        env=env,
    )  # fmt: skip
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout)
    assert match, started.stdout
    flow_run_id = match.group(1)

    worker = prefect(
        "worker", "start", "--pool", "tweetflow-ecs", "--type", "ecs", "--run-once",
        env=env, timeout=WORKER_TIMEOUT,
    )  # fmt: skip
    output = worker.stdout + worker.stderr

    # The task definition comes from the pool's base job template and the
    # deployment's job variables: one registration, in the template's family.
    ecs = client("ecs", aws)
    arns = ecs.list_task_definitions(familyPrefix=FAMILY)["taskDefinitionArns"]
    assert len(arns) == 1, (arns, output)
    taskdef = ecs.describe_task_definition(taskDefinition=arns[0])["taskDefinition"]
    assert taskdef["family"] == FAMILY
    assert (taskdef["cpu"], taskdef["memory"]) == (str(CPU), str(MEMORY))
    assert taskdef["requiresCompatibilities"] == ["FARGATE"]
    assert taskdef["networkMode"] == "awsvpc"
    [container] = taskdef["containerDefinitions"]
    assert container["name"] == "prefect"
    assert container["image"] == IMAGE
    assert (container["cpu"], container["memory"]) == (CPU, MEMORY)
    assert container["essential"] is True
    assert taskdef["executionRoleArn"] == EXECUTION_ROLE

    # RunTask was called once for the run, on the cluster, with that task
    # definition and the run's command, environment, size and role as overrides.
    # (Picked by tag: a scheduled weekly run falling due right now would be there too.)
    task_arns = ecs.list_tasks(cluster=CLUSTER)["taskArns"]
    assert task_arns, output
    tasks = ecs.describe_tasks(cluster=CLUSTER, tasks=task_arns, include=["TAGS"])
    [task] = [t for t in tasks["tasks"] if tags(t)[RUN_TAG] == flow_run_id]
    assert task["taskDefinitionArn"] == arns[0]
    assert task["launchType"] == "FARGATE"
    overrides = task["overrides"]
    assert overrides["taskRoleArn"] == TASK_ROLE
    assert (overrides["cpu"], overrides["memory"]) == (str(CPU), str(MEMORY))
    [override] = overrides["containerOverrides"]
    assert override["name"] == "prefect"
    assert override["command"] == ["prefect", "flow-run", "execute"]
    assert (override["cpu"], override["memory"]) == (CPU, MEMORY)
    environment = {item["name"]: item["value"] for item in override["environment"]}
    assert environment["PREFECT__FLOW_RUN_ID"] == flow_run_id
    # The container reports to the worker's own API URL: in production that URL
    # must be reachable from the task's subnets.
    assert environment["PREFECT_API_URL"] == env["PREFECT_API_URL"]
    # From the deployment's job variables (prefect.yaml).
    assert environment["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    # The team's Dask scheduler, named at deploy time, reaches the flow run.
    assert environment[ADDRESS_ENV] == DASK_SCHEDULER
    assert tags(task)["prefect.io/deployment-name"] == "weekly-ecs"

    # The worker recorded the submission: the run is Pending (nothing runs it
    # under moto) and points at the ECS task, so it can be cancelled.
    flow_run = api(env, f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "PENDING", flow_run["state"]
    assert flow_run["infrastructure_pid"] == f"{CLUSTER}::{task['taskArn']}"
