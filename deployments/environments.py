"""The deployments of prefect.yaml that each environment registers.

The embedded set-up (``local``) and production (``ecs``) each register only the
deployments on their own work pool, by name, so neither carries the other's.
``python -m deployments.environments local|ecs`` prints them one a line as
``flow/deployment``, the form ``prefect deploy --name`` takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
POOLS = {"local": "tweetflow-local", "ecs": "tweetflow-ecs"}


def deployment_names(environment: str, prefect_yaml: Path | None = None) -> list[str]:
    """``flow/deployment`` of every deployment on the environment's work pool."""
    pool = POOLS[environment]
    path = prefect_yaml or PREFECT_YAML
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        # Prefect matches the flow part against the entrypoint's function name.
        f"{entry['entrypoint'].rsplit(':', 1)[1].replace('_', '-')}/{entry['name']}"
        for entry in config["deployments"]
        if entry["work_pool"]["name"] == pool
    ]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.environments",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("environment", choices=sorted(POOLS))
    args = parser.parse_args(argv)
    names = deployment_names(args.environment)
    if not names:
        pool = POOLS[args.environment]
        print(f"error: no deployment in prefect.yaml uses {pool}", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
