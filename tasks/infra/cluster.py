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


def task_runner(choice: ClusterChoice, api_url: str | None) -> Any:
    """A Prefect task runner (``DaskTaskRunner``) for the choice; None: the flow's
    own threads. The workers of a cluster the run starts report their task runs
    to ``api_url`` (this run's Prefect API) and keep their scratch space where
    ``DASK_TEMPORARY_DIRECTORY`` says."""
    if not choice.distributed:
        return None
    from prefect_dask import DaskTaskRunner

    # Dask's own start-up and shutdown lines stay out of the run's log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if choice.address:
        return DaskTaskRunner(address=choice.address)
    # The worker processes read Dask's logging settings when they start.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": choice.workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "env": env,
        }
    )
