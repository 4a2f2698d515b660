"""Where a run's partitioned tasks run: in this process, on a Dask cluster the
run starts (``dask_workers``), or on an existing one (``dask_address``).

The address also comes from ``TWEETFLOW_DASK_ADDRESS`` (a deployment's job
variable sets it on the container). Workers on other machines read and write
through the artifact store, so an existing cluster needs a shared (``s3://``)
store; a cluster the run starts runs beside it and may share a local one.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tasks.infra import storage
from tasks.infra.errors import InputError

ADDRESS_ENV = "TWEETFLOW_DASK_ADDRESS"
ADDRESS = re.compile(r"^(tcp|tls|ws|wss|inproc|ucx)://[^\s/]+$")


class ClusterError(InputError):
    """Cluster settings a person can fix (shown as one line)."""


@dataclass(frozen=True)
class ClusterChoice:
    """Where the partitioned tasks of one run go."""

    address: str = ""  # an existing scheduler
    workers: int = 0  # a LocalCluster of that many worker processes

    @property
    def distributed(self) -> bool:
        """Whether the partitioned tasks run on Dask at all."""
        return bool(self.address or self.workers)

    def reads(self, source: str) -> bool:
        """Whether the workers can read ``source`` themselves: an existing
        cluster's workers (other machines) only an s3:// or bundled one."""
        return self.distributed and (
            not self.address
            or storage.is_remote(source)
            or source.startswith("sample://")
        )

    def describe(self) -> str:
        """One phrase for the logs."""
        if self.address:
            return f"the Dask cluster at {self.address}"
        if self.workers:
            return f"a local Dask cluster of {self.workers} worker processes"
        return "this process"


def choose_cluster(
    address: str, workers: int, artifacts_dir: str, environ: Any = None
) -> ClusterChoice:
    """The cluster for a run's settings (address, else ``TWEETFLOW_DASK_ADDRESS``,
    else ``workers`` local processes, else none), checked: one clear error for
    an address that is not a scheduler URL, both set at once, or a local store
    with an existing cluster (its workers could not see the files)."""
    environ = os.environ if environ is None else environ
    address = (address or "").strip()
    if not address and not workers:
        address = str(environ.get(ADDRESS_ENV, "")).strip()
    if address and workers:
        raise ClusterError(
            "give either dask_address (an existing cluster) or dask_workers "
            "(a local cluster for this run), not both"
        )
    if workers < 0:
        raise ClusterError(f"dask_workers must be 0 or more, not {workers}")
    if address and not ADDRESS.match(address):
        raise ClusterError(
            f"dask_address {address!r} is not a scheduler address such as "
            "tcp://10.0.0.5:8786"
        )
    if address and not storage.is_remote(storage.normalise_root(artifacts_dir)):
        raise ClusterError(
            f"the Dask cluster at {address} needs a shared artifact store: "
            f"artifacts_dir {artifacts_dir!r} is local to this machine, use an "
            "s3:// prefix"
        )
    return ClusterChoice(address, workers)


def _local_cluster_kwargs(workers: int, api_url: str | None) -> dict[str, Any]:
    """A LocalCluster of ``workers`` single-threaded processes on 127.0.0.1,
    reporting their task runs to ``api_url`` (this run's Prefect API)."""
    # Dask's own start-up and shutdown lines stay out of the run's log; the
    # worker processes read Dask's logging settings when they start.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "env": env,
    }


def task_runner(choice: ClusterChoice, api_url: str | None) -> Any:
    """A Prefect task runner (``DaskTaskRunner``) for the choice; None: the flow's
    own threads. The workers of a cluster the run starts report their task runs
    to ``api_url`` (this run's Prefect API) and keep their scratch space where
    ``DASK_TEMPORARY_DIRECTORY`` says."""
    if not choice.distributed:
        return None
    from prefect_dask import DaskTaskRunner

    if choice.address:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        return DaskTaskRunner(address=choice.address)
    return DaskTaskRunner(cluster_kwargs=_local_cluster_kwargs(choice.workers, api_url))


@contextmanager
def open_cluster(choice: ClusterChoice, api_url: str | None) -> Iterator[str]:
    """The scheduler address a run's stages send their partitions to, for as
    long as the run needs it: the existing cluster's, or that of a LocalCluster
    started here (and closed, with its workers, on the way out); "" for none."""
    if not choice.distributed:
        yield ""
        return
    if choice.address:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        yield choice.address
        return
    from distributed import LocalCluster

    with LocalCluster(**_local_cluster_kwargs(choice.workers, api_url)) as cluster:
        yield str(cluster.scheduler_address)


def prefect_api_url() -> str | None:
    """This run's Prefect API, for the workers of a cluster the run starts."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url) or None
