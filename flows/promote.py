"""The promote flow: move the champion alias by hand to any registered version,
e.g. to roll back. Wiring only: the move is ``tasks.release.promotion``'s
verified, atomic path (files downloaded and checked, alias set last), tagged
as a rollback when the version is older than the champion, announced with the
``tweetflow.model.promoted`` event (batch inference follows it).

Run locally: ``python -m flows.promote --to 3``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.cli import apply_log_level, exit_now, run_command
from flows.parameters import LogLevel, PromoteParameters
from tasks.infra.caching import StageRunner
from tasks.infra.lease import release_lock, run_purpose
from tasks.infra.store import ArtifactStore
from tasks.release.config import load_release_config
from tasks.release.promotion import move_champion_task

D = PromoteParameters.model_fields


class PromoteResult(BaseModel):
    """What a promotion by hand did."""

    model_version: str
    status: str
    reason: str
    previous_champion: str | None
    rollback: bool


@flow(name="promote", log_prints=False)
def promote(
    to: str,
    artifacts_dir: str = D["artifacts_dir"].default,
    promotion_config: str = D["promotion_config"].default,
    reason: str = D["reason"].default,
    log_level: LogLevel = D["log_level"].default,
) -> PromoteResult:
    """Make registered version ``to`` the champion (verified; a rollback is tagged).

    Args:
        to: The registered version to make the champion: a number such as 3, or
            <model name>/3.
        artifacts_dir: Artifact store root whose registry holds the models.
        promotion_config: Registry settings (YAML): MLflow URI and model name.
        reason: Why, recorded on the version (promotion_reason tag).
        log_level: Verbosity of the run's logs in the Prefect dashboard.
    """
    p = PromoteParameters.model_validate(locals())
    apply_log_level(p.log_level)
    store = ArtifactStore(p.artifacts_dir)
    release = load_release_config(p.promotion_config)
    logger = get_run_logger()
    run = StageRunner(store.root_uri, "local", logger)
    with release_lock(store.root_uri, run_purpose("promote"), logger.info):
        moved = run("move-champion", move_champion_task, p.to, release, p.reason)
    return PromoteResult(
        model_version=f"{release.model_name}/{moved.version}",
        status=moved.status,
        reason=moved.reason,
        previous_champion=moved.previous_champion,
        rollback=moved.rollback,
    )


def summary(result: Any) -> str:
    """One line about what moved."""
    if result.status != "promoted":
        return f"promote: {result.model_version} is {result.reason}; nothing moved"
    return (
        f"promote: champion is now {result.model_version} "
        f"({'rollback' if result.rollback else 'manual promotion'}; was "
        f"{result.previous_champion or 'none'}): {result.reason}"
    )


def parse_args(
    argv: list[str] | None = None, prog: str = "python -m flows.promote"
) -> PromoteParameters:
    """The promote command line, generated from ``PromoteParameters``."""
    from flows.options import ModelParser

    return ModelParser(
        PromoteParameters,
        prog=prog,
        description="Move the champion alias to a registered version (a rollback "
        "when it is older), after checking its files against their manifest.",
    ).parse(argv)


def main(argv: list[str] | None = None, prog: str = "python -m flows.promote") -> int:
    """Command-line entry point: move the champion, print what moved."""
    from tasks.infra.registry import Registry
    from tasks.release.promotion import registered_version
    from tasks.serving.resolve import check_model_spec

    def preflight() -> PromoteParameters:
        params = parse_args(argv, prog)
        release = load_release_config(params.promotion_config)
        root = ArtifactStore(params.artifacts_dir).root
        check_model_spec("champion", root, release)  # a registry exists
        registered_version(Registry.open(root, release), params.to)
        return params

    return run_command(preflight, lambda p: promote(**p.as_flow_kwargs()), summary)


if __name__ == "__main__":
    exit_now(main())
