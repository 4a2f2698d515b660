"""Keep one weekly retrain per environment.

``prefect deploy --all`` registers both retrain deployments; the schedule of the
deployment whose work pool belongs to the other environment is paused, so the
embedded set-up and production each run exactly one weekly retrain.

Usage: ``python -m deployments.schedules local|ecs``.
"""

from __future__ import annotations

import argparse
import sys

POOLS = {"local": "tweetflow-local", "ecs": "tweetflow-ecs"}
FLOW = "retrain"


def select_environment(environment: str) -> dict[str, bool]:
    """Activate the schedules of this environment's deployments, pause the others.

    Returns deployment name -> whether its schedules are now active.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    pool = POOLS[environment]
    states: dict[str, bool] = {}
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW]))
        )
        for deployment in deployments:
            active = deployment.work_pool_name == pool
            for schedule in deployment.schedules:
                if schedule.active != active:
                    client.update_deployment_schedule(
                        deployment.id, schedule.id, active=active
                    )
            states[f"{FLOW}/{deployment.name}"] = active
    return states


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.schedules", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("environment", choices=sorted(POOLS))
    args = parser.parse_args(argv)
    states = select_environment(args.environment)
    if not states:
        print(f"error: no {FLOW} deployments found; deploy first", file=sys.stderr)
        return 1
    for name, active in sorted(states.items()):
        print(f"{name}: schedule {'active' if active else 'paused'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
