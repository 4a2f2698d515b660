"""prefect.yaml and the ECS job template say what the deployments need."""

from __future__ import annotations

import json

import yaml

from tests.servers import REPO


def deployments(entrypoint: str = "flows/retrain.py:retrain") -> dict[str, dict]:
    """One flow's deployment entries of prefect.yaml by name, aliases resolved."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {
        entry["name"]: entry
        for entry in config["deployments"]
        if entry["entrypoint"] == entrypoint
    }


def test_batch_inference_has_a_local_and_an_ecs_deployment() -> None:
    found = deployments("flows/batch_inference.py:batch_inference")
    assert {name: d["work_pool"]["name"] for name, d in found.items()} == {
        "on-demand": "tweetflow-local",
        "on-demand-ecs": "tweetflow-ecs",
    }
    assert all(d["enforce_parameter_schema"] for d in found.values())
    assert "schedules" not in found["on-demand"]


def test_both_deployments_share_the_retrain_definition() -> None:
    found = deployments()
    assert set(found) == {"weekly", "weekly-ecs"}
    shared = ["entrypoint", "schedules", "concurrency_limit", "tags", "version"]
    local, ecs = found["weekly"], found["weekly-ecs"]
    for key in [*shared, "enforce_parameter_schema", "description"]:
        assert local[key] == ecs[key], key
    assert local["entrypoint"] == "flows/retrain.py:retrain"
    assert local["enforce_parameter_schema"] is True
    assert local["concurrency_limit"]["limit"] == 1
    [schedule] = local["schedules"]
    assert schedule["cron"] == "0 3 * * 1" and schedule["timezone"] == "UTC"
    assert schedule["slug"] and schedule["active"] is True
    assert local["work_pool"]["name"] == "tweetflow-local"
    assert ecs["work_pool"]["name"] == "tweetflow-ecs"
    # YAML aliases, not copies: the text defines the schedule once.
    assert (REPO / "prefect.yaml").read_text().count("cron:") == 1


def test_deployment_parameters_are_the_flow_models_defaults() -> None:
    from flows.retrain import RetrainParameters

    defaults = RetrainParameters().model_dump(mode="json")
    found = deployments()
    for key, value in found["weekly"]["parameters"].items():
        assert defaults[key] == value, key
    # Production differs only where the environment does: nothing stays on the task.
    ecs = found["weekly-ecs"]["parameters"]
    differing = {k for k, v in ecs.items() if defaults[k] != v}
    assert differing == {"result_storage", "artifacts_dir"}
    assert ecs["artifacts_dir"] == "{{ $TWEETFLOW_ARTIFACTS_URI }}"
    RetrainParameters.model_validate(ecs)


def test_the_ecs_image_and_role_come_from_the_environment() -> None:
    variables = deployments()["weekly-ecs"]["work_pool"]["job_variables"]
    assert variables["image"] == "{{ $TWEETFLOW_IMAGE }}"
    assert variables["task_role_arn"] == "{{ $TWEETFLOW_TASK_ROLE_ARN }}"
    assert variables["execution_role_arn"] == "{{ $TWEETFLOW_EXECUTION_ROLE_ARN }}"
    assert isinstance(variables["cpu"], int) and isinstance(variables["memory"], int)
    [pull] = deployments()["weekly-ecs"]["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"] == {
        "directory": "/opt/tweetflow"
    }


def test_the_ecs_task_definition_has_container_cpu_and_memory() -> None:
    template = json.loads((REPO / "deployments/ecs-base-job-template.json").read_text())
    [container] = template["job_configuration"]["task_definition"][
        "containerDefinitions"
    ]
    assert container["cpu"] == "{{ cpu }}" and container["memory"] == "{{ memory }}"
    assert container["image"] == "{{ image }}"
    assert set(template["variables"]["properties"]) >= {
        "cpu",
        "memory",
        "task_role_arn",
    }
