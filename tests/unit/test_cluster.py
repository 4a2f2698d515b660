"""Choosing where a run's partitions run: settings checked before anything runs."""

from __future__ import annotations

import pytest

from tasks.infra.cluster import ADDRESS_ENV, ClusterError, choose_cluster, task_runner


def test_no_cluster_setting_keeps_the_in_process_path() -> None:
    choice = choose_cluster("", 0, "artifacts", environ={})
    assert not choice.distributed
    assert task_runner(choice, None) is None


def test_the_environment_names_the_scheduler_when_the_run_does_not() -> None:
    environ = {ADDRESS_ENV: "tcp://10.0.0.5:8786"}
    choice = choose_cluster("", 0, "s3://team/tweetflow", environ=environ)
    assert choice.address == "tcp://10.0.0.5:8786"
    # The run's own setting wins over the environment, and so does a local cluster.
    assert choose_cluster("tcp://10.0.0.9:8786", 0, "s3://b/p", environ).address == (
        "tcp://10.0.0.9:8786"
    )
    local = choose_cluster("", 2, "artifacts", environ=environ)
    assert (local.address, local.workers) == ("", 2)


@pytest.mark.parametrize(
    ("address", "workers", "store", "says"),
    [
        ("tcp://10.0.0.5:8786", 0, "artifacts", "needs a shared artifact store"),
        ("tcp://10.0.0.5:8786", 0, "file:///srv/store", "use an s3:// prefix"),
        ("10.0.0.5:8786", 0, "s3://b/p", "is not a scheduler address"),
        ("tcp://10.0.0.5:8786", 2, "s3://b/p", "not both"),
        ("", -1, "artifacts", "0 or more"),
    ],
)
def test_settings_a_cluster_cannot_run_are_refused_in_one_line(
    address: str, workers: int, store: str, says: str
) -> None:
    with pytest.raises(ClusterError, match=says) as refused:
        choose_cluster(address, workers, store, environ={})
    assert "\n" not in str(refused.value)


def test_a_local_cluster_reports_to_the_runs_api_and_binds_to_loopback() -> None:
    runner = task_runner(choose_cluster("", 2, "artifacts", {}), "http://h:1/api")
    kwargs = runner.cluster_kwargs
    assert kwargs["n_workers"] == 2 and kwargs["processes"] is True
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["env"]["PREFECT_API_URL"] == "http://h:1/api"
    existing = task_runner(choose_cluster("tcp://127.0.0.1:1", 0, "s3://b/p", {}), None)
    assert existing.address == "tcp://127.0.0.1:1"
