"""Promotion: gate a registered challenger against the champion, maybe move the alias.

The gate scores the challenger and the current champion on the same frozen
set of tweets (``tasks.release.gate``); the ``champion`` alias moves to the new
version only when every rule passes (or when forced), after the registered
files were downloaded and checked against their manifest, in one call, last:
a crash before it leaves the alias on the previous champion.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks.infra.caching import uncached_task
from tasks.infra.errors import ModelVerificationError, NoChampionError, RegistryError
from tasks.infra.registry import (
    CHAMPION,
    MODEL_ARTIFACT_PATH,
    TAG_FORCED,
    TAG_FROZEN_SHA,
    TAG_PREVIOUS,
    TAG_PROMOTION,
    TAG_REASON,
    TAG_ROLLBACK,
    TAG_VALUE_LIMIT,
    Registry,
    RegistryConfig,
)
from tasks.infra.store import ArtifactStore
from tasks.release.config import ReleaseConfig
from tasks.release.frozen import frozen_evaluation_set
from tasks.release.gate import GateDecision, evaluate_gate
from tasks.release.tracking import TrackedRun, log_run
from tasks.serving.resolve import LoadedModel, check_registered_bundle, resolve_model

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

PromoteMode = Literal["never", "auto", "force"]
PromotionStatus = Literal["promoted", "rejected", "skipped"]
REGISTRY_FILE = "registry.json"
LATEST_FILE = "LATEST"  # names the newest run that is published and registered


@dataclass(frozen=True)
class PromotionOutcome:
    """What promotion did with a version."""

    version: str
    status: PromotionStatus
    promoted: bool
    forced: bool
    reason: str
    previous_champion: str | None
    rollback: bool = False  # moved by hand to a version older than the champion


def promote(
    registry_root: str | Path,
    config: RegistryConfig,
    version: str,
    decision: GateDecision,
    mode: PromoteMode,
) -> PromotionOutcome:
    """Move the champion alias to ``version`` if the mode and the gate allow it.

    never: the alias stays; auto: it moves only when every rule passed; force:
    it moves regardless, tagged as forced. Before the alias moves (one call,
    last), the version must be READY and its registered files, downloaded
    afresh, must match their manifest and the registered manifest hash, so a
    crash or a bad upload leaves the alias on the previous champion.
    """
    reg = Registry.open(registry_root, config)
    version = str(version)
    mv = reg.wait_until_ready(version)
    previous = reg.champion()
    previous_version = str(previous.version) if previous else None
    if previous_version == version and mv.tags.get(TAG_PROMOTION) == "promoted":
        # The same bundle again (or a retry after the alias moved): its record stays.
        return PromotionOutcome(
            version, "promoted", True, False, "already the champion", version
        )
    set_tag = reg.client.set_model_version_tag
    set_tag(reg.name, version, TAG_FROZEN_SHA, decision.frozen_sha256)
    set_tag(reg.name, version, "gate", "passed" if decision.promote else "failed")
    set_tag(reg.name, version, "gate_reason", decision.reason[:TAG_VALUE_LIMIT])
    for rule in decision.rules:
        set_tag(
            reg.name, version, f"gate.{rule.name}", rule.explanation[:TAG_VALUE_LIMIT]
        )

    def outcome(
        status: PromotionStatus, reason: str, forced: bool = False
    ) -> PromotionOutcome:
        set_tag(reg.name, version, TAG_PROMOTION, status)
        set_tag(reg.name, version, TAG_REASON, reason[:TAG_VALUE_LIMIT])
        promoted = status == "promoted"
        return PromotionOutcome(
            version, status, promoted, forced, reason, previous_version
        )

    if mode == "never":
        return outcome("skipped", "promotion mode is 'never'; gate " + decision.reason)
    if previous_version == version:
        return outcome("promoted", "already the champion")
    forced = not decision.promote
    if mode == "auto" and forced:
        return outcome("rejected", "gate " + decision.reason)
    try:
        verify_registered(reg, mv)
    except ModelVerificationError as exc:
        outcome("rejected", str(exc))
        raise
    reason = ("forced despite gate " if forced else "gate ") + decision.reason
    if previous_version:
        set_tag(reg.name, version, TAG_PREVIOUS, previous_version)
    set_tag(reg.name, version, TAG_FORCED, str(forced).lower())
    reg.client.set_registered_model_alias(reg.name, CHAMPION, version)
    return outcome("promoted", reason, forced)


def registered_version(reg: Registry, version: str) -> ModelVersion:
    """The registered version ``version`` names (``3`` or ``<model>/3``)."""
    number = str(version).strip().removeprefix(f"{reg.name}/")
    if not number.isdigit():
        raise RegistryError(
            f"--to needs a version number of {reg.name!r} (such as 3), not {number!r}"
        )
    return reg.version(number)


def move_champion(
    registry_root: str | Path, config: RegistryConfig, version: str, reason: str = ""
) -> PromotionOutcome:
    """Move the champion alias by hand to any registered ``version`` (``3`` or
    ``<model>/3``), through the same verified path as a gated promotion: the
    version must be READY and its registered files, downloaded afresh, must
    match their manifest and registered hash; the alias moves last, in one
    call. A move to an older version is tagged as a rollback."""
    reg = Registry.open(registry_root, config)
    version = str(registered_version(reg, version).version)
    mv = reg.wait_until_ready(version)
    previous = reg.champion()
    previous_version = str(previous.version) if previous else None
    if previous_version == version:
        return PromotionOutcome(
            version, "skipped", False, False, "already the champion", version
        )
    verify_registered(reg, mv)
    rollback = previous_version is not None and int(version) < int(previous_version)
    what = "rollback" if rollback else "manual promotion"
    note = f"{what} from {previous_version or 'no champion'}" + (
        f": {reason}" if reason else ""
    )
    set_tag = reg.client.set_model_version_tag
    if previous_version:
        set_tag(reg.name, version, TAG_PREVIOUS, previous_version)
    set_tag(reg.name, version, TAG_ROLLBACK, str(rollback).lower())
    set_tag(reg.name, version, TAG_FORCED, "false")
    set_tag(reg.name, version, TAG_PROMOTION, "promoted")
    set_tag(reg.name, version, TAG_REASON, note[:TAG_VALUE_LIMIT])
    reg.client.set_registered_model_alias(reg.name, CHAMPION, version)
    return PromotionOutcome(
        version, "promoted", True, False, note, previous_version, rollback
    )


def verify_registered(reg: Registry, mv: ModelVersion) -> None:
    """Download a version's files and check them against manifest and tag."""
    reg.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=reg.root, prefix=".verify-") as tmp:
        local = reg.download(mv.version, Path(tmp) / "model")
        check_registered_bundle(local, mv, reg.name)


def gate_challenger(
    run_dir: str | Path,
    store: ArtifactStore,
    registry_root: str | Path,
    config: ReleaseConfig,
    tracked: TrackedRun,
) -> GateDecision:
    """Score the run's model and the champion on the frozen set against the rules."""
    run_dir = Path(run_dir)
    frozen = frozen_evaluation_set(store, config, run_dir)
    champion: LoadedModel | None = None
    problem = None
    try:
        champion = resolve_model(CHAMPION, registry_root, config)
    except NoChampionError:
        champion = None
    except ModelVerificationError as exc:
        problem = f"the current champion cannot be used: {exc}"
    if champion is not None and champion.version == tracked.model_version:
        champion = None  # a retried task: do not compare the version with itself
    info = json.loads((run_dir / "run.json").read_text())
    return evaluate_gate(
        run_dir / MODEL_ARTIFACT_PATH,
        champion.path if champion else None,
        {k: float(v) for k, v in info.get("metrics", {}).items()},
        frozen,
        config.gate,
        champion.version if champion else None,
        problem,
    )


@dataclass
class RegistryOutcome:
    """Everything a retrain reports about tracking, gating and promotion."""

    tracked: TrackedRun
    decision: GateDecision
    promotion: PromotionOutcome

    def markdown(self) -> str:
        """Report section with links."""
        t, p = self.tracked, self.promotion
        identical = (
            f" (byte-identical to run {t.identical_to_run}'s model: nothing new "
            "registered)"
            if t.identical_to_run
            else ""
        )
        return (
            f"## Registry\n\n- MLflow run: [{t.mlflow_run_id}]({t.run_url})\n"
            f"- model version: [{t.model_version}]({t.version_url}){identical}\n"
            f"- promotion: **{p.status}**{' (forced)' if p.forced else ''}: "
            f"{p.reason}\n- champion before: {p.previous_champion or 'none'}\n\n"
            + self.decision.markdown()
        )

    def record(self) -> dict:
        """The run folder's ``registry.json``."""
        return {
            "mlflow_run_id": self.tracked.mlflow_run_id,
            "mlflow_run_url": self.tracked.run_url,
            "model_version": self.tracked.model_version,
            "model_version_url": self.tracked.version_url,
            "identical_to_run": self.tracked.identical_to_run,
            "promotion": self.promotion.status,
            "promoted": self.promotion.promoted,
            "forced": self.promotion.forced,
            "reason": self.promotion.reason,
            "previous_champion": self.promotion.previous_champion,
            "gate": self.decision.as_table(),
        }


def register_and_promote(
    run_dir: str | Path,
    store: ArtifactStore,
    config: ReleaseConfig,
    mode: PromoteMode = "auto",
) -> RegistryOutcome:
    """Track and register a run, gate it against the champion, maybe promote it.

    The three steps the retrain flow runs as tasks, in one call.
    """
    registry_root = store.root
    tracked = log_run(run_dir, registry_root, config)
    decision = gate_challenger(run_dir, store, registry_root, config, tracked)
    promotion = promote(registry_root, config, tracked.version, decision, mode)
    return RegistryOutcome(tracked, decision, promotion)


@uncached_task("gate")
def gate(
    run_dir: str, config: ReleaseConfig, tracked: TrackedRun, *, artifacts_dir: str
) -> GateDecision:
    """Score the challenger and the champion on the frozen set against the rules."""
    from prefect import get_run_logger

    logger = get_run_logger()
    store = ArtifactStore(artifacts_dir)
    decision = gate_challenger(run_dir, store, store.root, config, tracked)
    for rule in decision.rules:
        verdict = "" if rule.skipped else ("passed: " if rule.passed else "FAILED: ")
        logger.info("gate: %s %s%s", rule.name, verdict, rule.explanation)
    return decision


@uncached_task("promote")
def promote_challenger(
    run_dir: str,
    config: ReleaseConfig,
    tracked: TrackedRun,
    decision: GateDecision,
    mode: PromoteMode,
    *,
    artifacts_dir: str,
) -> RegistryOutcome:
    """Move the champion alias if the mode and the gate allow; write registry.json,
    then point ``LATEST`` at the run."""
    from prefect import get_run_logger

    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    promotion = promote(store.root, config, tracked.version, decision, mode)
    outcome = RegistryOutcome(tracked, decision, promotion)
    run_id = Path(run_dir).name
    # Written beside the completed run (its files are all in place already).
    store.write_text(
        f"runs/{run_id}/{REGISTRY_FILE}",
        json.dumps(outcome.record(), indent=2, sort_keys=True, default=str) + "\n",
    )
    # Only now is the run complete (files, version, registry record): LATEST moves.
    store.write_text(LATEST_FILE, run_id + "\n")
    get_run_logger().info(
        "promote: %s %s%s: %s (%.2fs)",
        tracked.model_version,
        promotion.status,
        " (forced)" if promotion.forced else "",
        promotion.reason,
        time.perf_counter() - started,
    )
    announce(outcome, run_id, artifacts_dir)
    return outcome


def announce(outcome: RegistryOutcome, run_id: str, artifacts_dir: str) -> None:
    """Emit ``tweetflow.model.promoted`` when the alias moved to this run's model,
    ``tweetflow.model.rejected`` when the gate refused it."""
    from tasks.release.events import PROMOTED, REJECTED, emit_release_event

    t, p = outcome.tracked, outcome.promotion
    moved = p.promoted and p.previous_champion != p.version
    if not moved and p.status != "rejected":
        return
    emit_release_event(
        PROMOTED if moved else REJECTED,
        t.model_name,
        {
            "model_version": t.model_version,
            "version": t.version,
            "run_id": run_id,
            "mlflow_run_id": t.mlflow_run_id,
            "previous_champion": p.previous_champion,
            "forced": p.forced,
            "reason": p.reason[:1000],
            "artifacts_dir": artifacts_dir,
        },
    )


@uncached_task("move-champion")
def move_champion_task(
    version: str, config: ReleaseConfig, reason: str, *, artifacts_dir: str
) -> PromotionOutcome:
    """Move the champion to ``version`` by hand (verified, atomic) and announce it."""
    from prefect import get_run_logger

    from tasks.infra.registry import TAG_RUN_ID
    from tasks.release.events import PROMOTED, emit_release_event

    started = time.perf_counter()
    store = ArtifactStore(artifacts_dir)
    moved = move_champion(store.root, config, version, reason)
    reg = Registry.open(store.root, config)
    get_run_logger().info(
        "move-champion: %s/%s %s: %s (%.2fs)",
        reg.name,
        moved.version,
        moved.status,
        moved.reason,
        time.perf_counter() - started,
    )
    if moved.promoted:
        mv = reg.version(moved.version)
        emit_release_event(
            PROMOTED,
            reg.name,
            {
                "model_version": f"{reg.name}/{moved.version}",
                "version": moved.version,
                "run_id": mv.tags.get(TAG_RUN_ID),
                "mlflow_run_id": mv.run_id,
                "previous_champion": moved.previous_champion,
                "forced": False,
                "rollback": moved.rollback,
                "reason": moved.reason[:1000],
                "artifacts_dir": artifacts_dir,
            },
        )
    return moved
