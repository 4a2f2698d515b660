"""Progress of long work: reports keep coming while the work is silent, and
say how far it got; nothing is drawn when stderr is not a terminal."""

from __future__ import annotations

import logging
import time

import pandas as pd
import pytest

from tasks.infra.progress import Progress
from tasks.stages.features import FeaturesConfig, training_sample, worker_count


def test_a_silent_step_is_reported_every_interval(caplog) -> None:
    caplog.set_level(logging.INFO, logger="tweetflow")
    with Progress("features", "word vectors", 4, every=0.05) as progress:
        time.sleep(0.2)
        progress.update(1, "epoch 1/4")
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert progress.reports >= 4
    assert len(lines) == progress.reports
    assert lines[0].startswith("features: word vectors 0%")
    assert any("25% (epoch 1/4)" in line for line in lines)
    assert progress.fraction == 1.0  # a finished step is complete


def test_rows_are_counted_and_never_beyond_the_total() -> None:
    progress = Progress("preprocessing", "tokenising", 1000, unit="rows")
    progress.advance(400)
    assert "40% 400/1,000 rows" in progress.message()
    progress.advance(900)
    assert progress.fraction == 1.0


def test_a_failed_step_is_not_reported_complete() -> None:
    with (
        pytest.raises(RuntimeError),
        Progress("features", "x", 10, every=60) as progress,
    ):
        progress.update(3)
        raise RuntimeError("boom")
    assert progress.fraction == 0.3


def test_no_bar_is_drawn_when_stderr_is_not_a_terminal(capsys) -> None:
    with Progress("features", "x", 2, every=0.02):
        time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_word_vectors_learn_from_a_bounded_seeded_sample() -> None:
    index = pd.Index([f"t{i}" for i in range(1000)])
    sample = training_sample(index, 100, seed=3)
    assert len(sample) == 100 and sample.is_unique
    assert list(sample) == sorted(sample, key=lambda t: int(t[1:]))  # kept in order
    assert sample.equals(training_sample(index, 100, seed=3))
    assert not sample.equals(training_sample(index, 100, seed=4))
    assert training_sample(index, 0, seed=3).equals(index)  # 0: all of them
    assert training_sample(index, 5000, seed=3).equals(index)


def test_word_vectors_use_every_core_unless_told_otherwise() -> None:
    import os

    assert worker_count(FeaturesConfig()) == len(os.sched_getaffinity(0))
    assert worker_count(FeaturesConfig(workers=1)) == 1
