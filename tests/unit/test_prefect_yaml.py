"""prefect.yaml and the ECS job template say what the deployments need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployments.environments import POOLS, deployment_names, main
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
        "after-promotion": "tweetflow-local",
        "after-promotion-ecs": "tweetflow-ecs",
    }
    assert all(d["enforce_parameter_schema"] for d in found.values())
    assert not any("schedules" in d for d in found.values())


def test_batch_inference_follows_every_promotion_with_the_promoted_version() -> None:
    found = deployments("flows/batch_inference.py:batch_inference")
    assert not any("triggers" in found[n] for n in ("on-demand", "on-demand-ecs"))
    local, ecs = found["after-promotion"], found["after-promotion-ecs"]
    assert local["triggers"] == ecs["triggers"]
    (trigger,) = local["triggers"]
    assert trigger["type"] == "event" and trigger["enabled"] is True
    assert trigger["expect"] == ["tweetflow.model.promoted"]
    from tasks.release.events import PROMOTED, model_resource

    assert trigger["expect"] == [PROMOTED]
    resource = model_resource("tweetflow-classifier")["prefect.resource.id"]
    assert resource.startswith(trigger["match"]["prefect.resource.id"].rstrip("*"))
    assert trigger["parameters"]["model"] == "{{ event.payload.version }}"
    assert local["parameters"]["source"] == "{{ $TWEETFLOW_INBOX }}"


def test_promote_has_a_deployment_in_each_environment() -> None:
    from flows.promote import promote

    found = deployments("flows/promote.py:promote")
    assert {name: d["work_pool"]["name"] for name, d in found.items()} == {
        "by-hand": "tweetflow-local",
        "by-hand-ecs": "tweetflow-ecs",
    }
    assert promote.name == "promote"
    assert found["by-hand-ecs"]["parameters"]["artifacts_dir"] == (
        "{{ $TWEETFLOW_ARTIFACTS_URI }}"
    )


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


def test_the_ecs_deployments_take_the_dask_scheduler_from_the_environment() -> None:
    from tasks.infra.cluster import ADDRESS_ENV, choose_cluster

    for name, deployment in deployments().items():
        env = deployment["work_pool"]["job_variables"].get("env", {})
        if name.endswith("-ecs"):
            assert env[ADDRESS_ENV] == "{{ $" + ADDRESS_ENV + " }}", name
        else:
            assert ADDRESS_ENV not in env, name
    # Deployed without one (embedded.sh sets it empty): the run stays in-process.
    assert not choose_cluster("", 0, "s3://b/p", environ={ADDRESS_ENV: ""}).distributed


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


def test_each_environment_deploys_the_deployments_on_its_own_pool() -> None:
    assert deployment_names("local") == [
        "retrain/weekly",
        "batch-inference/on-demand",
        "batch-inference/after-promotion",
        "promote/by-hand",
    ]
    assert deployment_names("ecs") == [
        "retrain/weekly-ecs",
        "batch-inference/on-demand-ecs",
        "batch-inference/after-promotion-ecs",
        "promote/by-hand-ecs",
    ]
    # Every deployment of prefect.yaml belongs to exactly one environment.
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    everything = [entry["name"] for entry in config["deployments"]]
    names = [n.split("/")[1] for env in POOLS for n in deployment_names(env)]
    assert sorted(names) == sorted(everything)
    # So each environment registers exactly one weekly schedule.
    for environment in POOLS:
        scheduled = [
            name
            for name in deployment_names(environment)
            for entry in config["deployments"]
            if entry["name"] == name.split("/")[1] and entry.get("schedules")
        ]
        assert len(scheduled) == 1, (environment, scheduled)


def test_the_environment_names_follow_the_flow_names() -> None:
    """``prefect deploy --name flow/deployment`` matches the flows' own names."""
    from flows.batch_inference import batch_inference
    from flows.promote import promote
    from flows.retrain import retrain

    flows = {n.split("/")[0] for env in POOLS for n in deployment_names(env)}
    assert flows == {retrain.name, batch_inference.name, promote.name}


def test_the_command_prints_one_name_a_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["ecs"]) == 0
    assert capsys.readouterr().out.splitlines() == deployment_names("ecs")


def test_an_environment_without_deployments_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    config["deployments"] = [
        d for d in config["deployments"] if d["work_pool"]["name"] == POOLS["local"]
    ]
    only_local = tmp_path / "prefect.yaml"
    only_local.write_text(yaml.safe_dump(config))
    assert deployment_names("ecs", only_local) == []
    assert len(deployment_names("local", only_local)) == 4
    monkeypatch.setattr("deployments.environments.PREFECT_YAML", only_local)
    assert main(["ecs"]) == 1
    assert "no deployment in prefect.yaml uses tweetflow-ecs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["staging"])
