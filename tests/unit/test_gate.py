"""The promotion gate's rules on synthetic scores: each rule passes and fails
where its threshold says, without models, MLflow or Prefect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.release.gate import FrozenSet, GateConfig, ModelScores, decide, gate_rules

GOOD_RUN = {"silhouette": 0.2, "stability_ari": 0.95}
CONFIG = GateConfig()
LABELS = np.repeat(np.arange(4), 25)


def scores(labels=LABELS, known: float = 1.0, silhouette: float = 0.2) -> ModelScores:
    return ModelScores(np.asarray(labels), known, silhouette)


def by_name(rules) -> dict:
    return {r.name: r for r in rules}


def frozen(rows: int = 100) -> FrozenSet:
    frame = pd.DataFrame({"tweet_id": [str(i) for i in range(rows)], "text": "x"})
    return FrozenSet(uri="file:///frozen.parquet", sha256="ab" * 32, frame=frame)


def test_a_first_model_passes_the_floors_and_skips_the_comparisons() -> None:
    rules = gate_rules(GOOD_RUN, scores(), None, CONFIG)
    named = by_name(rules)
    assert all(r.passed for r in rules)
    assert {n for n, r in named.items() if r.skipped} == {
        "agreement_ari",
        "silhouette_drop",
        "coverage_drop",
    }
    decision = decide(rules, frozen(), scores(), None, None)
    assert decision.promote
    assert decision.reason == "all 4 rules passed (3 skipped: no champion)"
    assert decision.champion is None and decision.champion_scores == {}


@pytest.mark.parametrize(
    ("rule", "run", "new"),
    [
        ("silhouette", {**GOOD_RUN, "silhouette": 0.01}, scores()),
        ("stability_ari", {**GOOD_RUN, "stability_ari": 0.5}, scores()),
        ("frozen_silhouette", GOOD_RUN, scores(silhouette=0.0)),
        ("no_known_share", GOOD_RUN, scores(known=0.9)),
    ],
)
def test_each_floor_fails_below_its_threshold(rule: str, run: dict, new) -> None:
    rules = gate_rules(run, new, None, CONFIG)
    assert [r.name for r in rules if not r.passed] == [rule]
    decision = decide(rules, frozen(), new, None, None)
    assert not decision.promote
    assert decision.reason.startswith(f"failed {rule}: ")
    assert [row["result"] for row in decision.as_table() if row["rule"] == rule] == [
        "FAIL"
    ]


def test_a_floor_exactly_at_its_threshold_passes() -> None:
    run = {"silhouette": CONFIG.min_silhouette, "stability_ari": 1.0}
    assert by_name(gate_rules(run, scores(), None, CONFIG))["silhouette"].passed


@pytest.mark.parametrize("missing", ["silhouette", "stability_ari"])
def test_a_missing_or_nan_run_metric_fails_rather_than_passing(missing: str) -> None:
    absent = {k: v for k, v in GOOD_RUN.items() if k != missing}
    nan = {**GOOD_RUN, missing: float("nan")}
    for run in (absent, nan):
        rule = by_name(gate_rules(run, scores(), None, CONFIG))[missing]
        assert not rule.passed and "unavailable" in rule.explanation


def test_agreement_is_invariant_to_renumbered_categories() -> None:
    renumbered = (LABELS + 1) % 4  # same partition, other ids
    rules = by_name(gate_rules(GOOD_RUN, scores(renumbered), scores(), CONFIG))
    assert rules["agreement_ari"].passed
    assert rules["agreement_ari"].value == pytest.approx(1.0)


def test_an_unrelated_partition_fails_agreement() -> None:
    shuffled = np.random.default_rng(0).permutation(LABELS)
    rules = by_name(gate_rules(GOOD_RUN, scores(shuffled), scores(), CONFIG))
    assert not rules["agreement_ari"].passed
    assert rules["agreement_ari"].value < CONFIG.min_agreement_ari


@pytest.mark.parametrize(
    ("champion", "challenger", "passes"),
    [(0.20, 0.16, True), (0.20, 0.14, False), (0.10, 0.30, True)],
)
def test_silhouette_may_not_drop_more_than_the_tolerance(
    champion: float, challenger: float, passes: bool
) -> None:
    rules = by_name(
        gate_rules(
            GOOD_RUN,
            scores(silhouette=challenger),
            scores(silhouette=champion),
            CONFIG,
        )
    )
    assert rules["silhouette_drop"].passed is passes
    assert rules["silhouette_drop"].value == pytest.approx(champion - challenger)


def test_an_unscorable_champion_silhouette_does_not_block_a_scorable_challenger() -> (
    None
):
    rules = by_name(
        gate_rules(GOOD_RUN, scores(), scores(silhouette=float("nan")), CONFIG)
    )
    assert rules["silhouette_drop"].passed
    assert "champion's frozen-set silhouette is unavailable" in (
        rules["silhouette_drop"].explanation
    )


@pytest.mark.parametrize(
    ("champion", "challenger", "passes"),
    [(0.995, 0.99, True), (0.995, 0.98, False), (0.97, 0.99, True)],
)
def test_known_word_coverage_may_not_drop_more_than_the_tolerance(
    champion: float, challenger: float, passes: bool
) -> None:
    lenient = CONFIG.model_copy(update={"max_no_known_share": 0.05})
    rules = by_name(
        gate_rules(GOOD_RUN, scores(known=challenger), scores(known=champion), lenient)
    )
    assert rules["coverage_drop"].passed is passes


def test_an_unusable_champion_fails_the_gate_and_says_why() -> None:
    rules = gate_rules(
        GOOD_RUN, scores(), None, CONFIG, champion_problem="manifest does not match"
    )
    named = by_name(rules)
    assert not named["champion_intact"].passed
    assert named["agreement_ari"].explanation == "skipped: champion unusable"
    decision = decide(rules, frozen(), scores(), None, "tweetflow-classifier/3")
    assert not decision.promote
    assert "champion_intact: manifest does not match" in decision.reason


def test_the_decision_reports_both_models_and_the_frozen_set() -> None:
    new, old = scores(silhouette=0.25), scores(silhouette=0.2, known=0.99)
    rules = gate_rules(GOOD_RUN, new, old, CONFIG)
    decision = decide(rules, frozen(120), new, old, "tweetflow-classifier/2")
    assert decision.promote and decision.reason == "all 7 rules passed"
    assert decision.champion == "tweetflow-classifier/2"
    assert decision.frozen_rows == 120
    assert decision.champion_scores == {"known_share": 0.99, "silhouette": 0.2}
    text = decision.markdown()
    assert "Passed: all 7 rules passed" in text
    assert text.count("| pass |") == 7
