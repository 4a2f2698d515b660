"""The promotion gate: explicit rules that a challenger model must pass.

Both the challenger and the current champion are scored on the same frozen set
of tweets with their own tokeniser settings and word vectors. Absolute floors
cover what does not depend on the pseudo-labels alone (cluster silhouette,
KMeans stability, known-word coverage, agreement with the champion's
categories); no-regression rules compare the two models on the frozen set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.infra.lazy import np, pd
from tasks.serving.model import TweetClassifier


class GateConfig(BaseModel):
    """The promotion gate's rules: absolute floors and no-regression tolerances.

    The defaults were measured on the bundled corpus, the US airline complaints
    and the airline support threads (see config/promotion.yaml): a normal
    retrain passes on each, a model with too few categories or too little
    vocabulary fails at least one rule.
    """

    model_config = ConfigDict(extra="forbid")

    min_silhouette: float = Field(
        0.05,
        ge=-1.0,
        le=1.0,
        description="Floor on the challenger's cluster silhouette (run metrics, "
        "discovery split).",
    )
    min_stability_ari: float = Field(
        0.8,
        ge=-1.0,
        le=1.0,
        description="Floor on clustering stability: ARI between the partitions two "
        "samples with different seeds lead to (run metrics).",
    )
    min_frozen_silhouette: float = Field(
        0.05,
        ge=-1.0,
        le=1.0,
        description="Floor on the silhouette of the challenger's own tweet vectors "
        "under its own predicted categories on the frozen evaluation set.",
    )
    max_no_known_share: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Ceiling on the share of frozen-set tweets with no word the "
        "challenger knows (they get no category).",
    )
    min_agreement_ari: float = Field(
        0.45,
        ge=-1.0,
        le=1.0,
        description="Floor on the ARI between champion's and challenger's predicted "
        "categories on the frozen set (skipped without a champion).",
    )
    max_silhouette_drop: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="How far the challenger's frozen-set silhouette may fall below "
        "the champion's (skipped without a champion).",
    )
    max_coverage_drop: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="How far the challenger's share of frozen-set tweets with a "
        "known word may fall below the champion's (skipped without a champion).",
    )
    silhouette_sample: int = Field(
        4000,
        ge=10,
        description="Frozen-set tweets scored by silhouette (quadratic cost); a "
        "seeded sample when the set is larger.",
    )
    seed: int = Field(0, description="Seed of that sample.")


@dataclass
class FrozenSet:
    """The fixed tweets both champion and challenger are scored on."""

    uri: str
    sha256: str
    frame: pd.DataFrame  # tweet_id, text
    created: bool = False


# The gate ----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleResult:
    """One gate rule's outcome."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    explanation: str
    skipped: bool = False


@dataclass
class ModelScores:
    """How one model does on the frozen set."""

    cluster_id: np.ndarray
    known_share: float
    silhouette: float


@dataclass
class GateDecision:
    """The gate's verdict on a challenger."""

    promote: bool
    rules: list[RuleResult]
    reason: str
    frozen_sha256: str
    frozen_rows: int
    champion: str | None = None
    challenger_scores: dict[str, float] = field(default_factory=dict)
    champion_scores: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[RuleResult]:
        """The rules that failed."""
        return [r for r in self.rules if not r.passed]

    def as_table(self) -> list[dict]:
        """One row per rule (for a Prefect table artifact)."""
        return [
            {
                "rule": r.name,
                "value": None if r.value is None else round(r.value, 4),
                "threshold": None if r.threshold is None else round(r.threshold, 4),
                "result": "skipped" if r.skipped else ("pass" if r.passed else "FAIL"),
                "explanation": r.explanation,
            }
            for r in self.rules
        ]

    def markdown(self) -> str:
        """The decision as a markdown section for the run report."""
        lines = [
            "## Promotion gate",
            "",
            f"{'Passed' if self.promote else 'Failed'}: {self.reason}",
            "",
            f"Frozen evaluation set: {self.frozen_rows} tweets, sha256 "
            f"`{self.frozen_sha256[:16]}`; champion: {self.champion or 'none'}.",
            "",
            "| rule | value | threshold | result | why |",
            "|---|---|---|---|---|",
        ]
        for row in self.as_table():
            lines.append(
                f"| {row['rule']} | {_fmt(row['value'])} | {_fmt(row['threshold'])} | "
                f"{row['result']} | {row['explanation']} |"
            )
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def score_model(
    model: TweetClassifier, texts: pd.Series, config: GateConfig
) -> ModelScores:
    """Predicted categories, known-word coverage and own-space silhouette."""
    from sklearn.metrics import silhouette_score

    predicted = model.predict(texts)
    vectors, n_known = model.vectors(texts)
    known = n_known > 0
    cluster_id = predicted["cluster_id"].to_numpy()
    rows = np.flatnonzero(known)
    if len(rows) > config.silhouette_sample:
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(rows, size=config.silhouette_sample, replace=False))
    labels = cluster_id[rows]
    n_labels = len(np.unique(labels))
    silhouette = (
        float(silhouette_score(vectors[rows], labels))
        if 2 <= n_labels < len(rows)
        else float("nan")
    )
    return ModelScores(
        cluster_id, float(known.mean()) if len(known) else 0.0, silhouette
    )


def _floor(name: str, value: float | None, floor: float, what: str) -> RuleResult:
    if value is None or not np.isfinite(value):
        return RuleResult(name, value, floor, False, f"{what} is unavailable")
    ok = value >= floor
    return RuleResult(
        name, value, floor, ok, f"{what} {value:.3f} {'>=' if ok else '<'} {floor:.3f}"
    )


def _skipped(name: str, threshold: float, why: str) -> RuleResult:
    return RuleResult(name, None, threshold, True, why, skipped=True)


def gate_rules(
    run_metrics: dict[str, float],
    new: ModelScores,
    old: ModelScores | None,
    config: GateConfig,
    champion_problem: str | None = None,
) -> list[RuleResult]:
    """The gate's rules on a challenger's scores (and the champion's, if any).

    Pure: ``run_metrics`` are the challenger run's silhouette and stability,
    ``new`` and ``old`` the two models' scores on the same frozen tweets.
    """
    from sklearn.metrics import adjusted_rand_score

    g = config
    rules = [
        _floor(
            "silhouette",
            run_metrics.get("silhouette"),
            g.min_silhouette,
            "cluster silhouette (discovery split)",
        ),
        _floor(
            "stability_ari",
            run_metrics.get("stability_ari"),
            g.min_stability_ari,
            "clustering stability ARI",
        ),
        _floor(
            "frozen_silhouette",
            new.silhouette,
            g.min_frozen_silhouette,
            "silhouette on the frozen set",
        ),
    ]
    no_known = 1.0 - new.known_share
    ok = no_known <= g.max_no_known_share
    rules.append(
        RuleResult(
            "no_known_share",
            no_known,
            g.max_no_known_share,
            ok,
            f"{no_known:.2%} of frozen tweets have no known word "
            f"({'<=' if ok else '>'} {g.max_no_known_share:.2%})",
        )
    )
    if champion_problem:
        rules.append(RuleResult("champion_intact", None, None, False, champion_problem))
    if old is None:
        why = "skipped: " + ("champion unusable" if champion_problem else "no champion")
        return rules + [
            _skipped("agreement_ari", g.min_agreement_ari, why),
            _skipped("silhouette_drop", g.max_silhouette_drop, why),
            _skipped("coverage_drop", g.max_coverage_drop, why),
        ]
    agreement = float(adjusted_rand_score(old.cluster_id, new.cluster_id))
    rules.append(
        _floor(
            "agreement_ari",
            agreement,
            g.min_agreement_ari,
            "ARI between champion's and challenger's categories on the frozen set",
        )
    )
    drop = old.silhouette - new.silhouette
    if np.isfinite(drop):
        ok = drop <= g.max_silhouette_drop
        text = (
            f"frozen-set silhouette {new.silhouette:.3f} vs champion "
            f"{old.silhouette:.3f}: drop {drop:+.3f} "
            f"({'<=' if ok else '>'} {g.max_silhouette_drop:.3f})"
        )
    elif np.isfinite(new.silhouette):
        ok, text = True, "the champion's frozen-set silhouette is unavailable"
    else:
        ok, text = False, "the challenger's frozen-set silhouette is unavailable"
    rules.append(RuleResult("silhouette_drop", drop, g.max_silhouette_drop, ok, text))
    drop = old.known_share - new.known_share
    ok = drop <= g.max_coverage_drop
    rules.append(
        RuleResult(
            "coverage_drop",
            drop,
            g.max_coverage_drop,
            ok,
            f"known-word coverage {new.known_share:.2%} vs champion "
            f"{old.known_share:.2%}: drop {drop:+.2%} "
            f"({'<=' if ok else '>'} {g.max_coverage_drop:.2%})",
        )
    )
    return rules


def decide(
    rules: list[RuleResult],
    frozen: FrozenSet,
    new: ModelScores,
    old: ModelScores | None,
    champion_label: str | None,
) -> GateDecision:
    """The verdict: promote only when no rule failed."""
    failed = [r for r in rules if not r.passed]
    skipped = sum(r.skipped for r in rules)
    if failed:
        reason = "failed " + "; ".join(f"{r.name}: {r.explanation}" for r in failed)
    else:
        reason = f"all {len(rules) - skipped} rules passed" + (
            f" ({skipped} skipped: no champion)" if skipped else ""
        )
    return GateDecision(
        promote=not failed,
        rules=rules,
        reason=reason,
        frozen_sha256=frozen.sha256,
        frozen_rows=len(frozen.frame),
        champion=champion_label if old is not None else None,
        challenger_scores={
            "known_share": new.known_share,
            "silhouette": new.silhouette,
        },
        champion_scores=(
            {"known_share": old.known_share, "silhouette": old.silhouette}
            if old
            else {}
        ),
    )


def evaluate_gate(
    challenger_dir: str | Path,
    champion_dir: str | Path | None,
    run_metrics: dict[str, float],
    frozen: FrozenSet,
    config: GateConfig,
    champion_label: str | None = None,
    champion_problem: str | None = None,
) -> GateDecision:
    """Score the challenger (and the champion) on the frozen set against the rules.

    ``run_metrics`` are the challenger run's metrics (run.json ``metrics``). Both
    bundles are loaded through ``TweetClassifier.load``, which verifies them.
    ``champion_problem`` says why a champion exists but cannot be used (its
    files fail verification): that fails the gate, so only a forced promotion
    replaces it.
    """
    texts = frozen.frame["text"]
    challenger = TweetClassifier.load(challenger_dir)
    champion = TweetClassifier.load(champion_dir) if champion_dir else None
    new = score_model(challenger, texts, config)
    old = score_model(champion, texts, config) if champion else None
    rules = gate_rules(run_metrics, new, old, config, champion_problem)
    return decide(rules, frozen, new, old, champion_label)
