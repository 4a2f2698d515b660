"""A corrupted store, with real processes on one real Prefect server: a cached
Parquet part truncated and an embedder file altered are detected by their
sha256 and recomputed; an altered registered model file and an altered frozen
evaluation set are refused with one ``error:`` line naming the file, and
nothing is served from them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tasks.infra.store import sha256_file, verify_manifest
from tests.reliability import faults
from tests.reliability.commands import batch_inference, finish, retrain, start

FAULT = "corrupted store"


def run_info(store: Path) -> dict:
    latest = (store / "LATEST").read_text().strip()
    return json.loads((store / "runs" / latest / "run.json").read_text())


def path_of(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def one_error_line(result: SimpleNamespace) -> str:
    """The one ``error:`` line of a refused command (no traceback)."""
    assert result.code != 0
    assert "Traceback" not in result.err, result.err[-3000:]
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def stores(server_env, small_csv: Path, tmp_path_factory) -> SimpleNamespace:
    """Two stores, each with one completed retrain (run side by side)."""
    work = tmp_path_factory.mktemp("corruption")
    cached, registered = work / "cached", work / "registered"
    procs = [
        (start(retrain(small_csv, store), server_env, work / name), work / name)
        for store, name in ((cached, "first-cached"), (registered, "first-reg"))
    ]
    for proc, log in procs:
        result = finish(proc, log)
        assert result.code == 0, result.err[-3000:]
    return SimpleNamespace(work=work, cached=cached, registered=registered)


@pytest.fixture(scope="module")
def damaged(stores, server_env, small_csv: Path) -> SimpleNamespace:
    """Damage both stores, then rerun against them all at once: a retrain on the
    cached store, a batch inference and a retrain on the registered one."""
    work = stores.work
    # A cached Parquet part (the preprocessing output), truncated.
    info = run_info(stores.cached)
    part = path_of(info["refs"]["preprocessed"]["uri"])
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    # An embedder file (the features stage's model folder), altered.
    embedder = path_of(info["refs"]["embedder"]["uri"])
    victim = sorted(p for p in embedder.rglob("*") if p.name != "manifest.json")[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    # A registered model file: MLflow's own copy of the champion's bundle.
    (manifest,) = (stores.registered / "mlflow" / "artifacts").rglob("manifest.json")
    bundle = manifest.parent
    listed = json.loads(manifest.read_text())["files"]
    model_file = bundle / sorted(listed)[0]
    model_file.write_bytes(model_file.read_bytes() + b"tampered")
    # The frozen evaluation set: one tweet's text changed, still valid Parquet.
    frozen = stores.registered / "registry" / "frozen_evaluation.parquet"
    frame = pd.read_parquet(frozen)
    frame.loc[0, "text"] = "an edited tweet"
    frame.to_parquet(frozen, index=False)
    output = work / "predictions.parquet"
    latest = (stores.registered / "LATEST").read_text()
    procs = {
        "rerun": start(retrain(small_csv, stores.cached), server_env, work / "rerun"),
        "batch": start(
            batch_inference(small_csv, output, stores.registered),
            server_env,
            work / "batch",
        ),
    }
    time.sleep(0.5)
    procs["gated"] = start(
        retrain(small_csv, stores.registered, "--training.C", "2.0"),
        server_env,
        work / "gated",
    )
    results = {name: finish(proc, work / name) for name, proc in procs.items()}
    return SimpleNamespace(
        results=results,
        part=part,
        embedder=embedder,
        victim=victim,
        model_file=model_file,
        frozen=frozen,
        output=output,
        latest=latest,
        info=info,
    )


def test_a_damaged_cached_part_and_embedder_are_recomputed(stores, damaged) -> None:
    rerun = damaged.results["rerun"]
    assert rerun.code == 0 and "Traceback" not in rerun.err, rerun.err[-3000:]
    for path in (damaged.part, damaged.embedder):
        assert str(path) in rerun.err and "re-running" in rerun.err, rerun.err[-3000:]
    # The rerun recomputed them: the files hash to their names again.
    assert sha256_file(damaged.part) == damaged.part.stem
    verify_manifest(damaged.embedder)
    # Same content as before the damage: the rerun changed nothing.
    assert run_info(stores.cached)["refs"] == damaged.info["refs"]
    faults.record(
        FAULT,
        tried=2,
        recovered=2,
        note="a truncated cached Parquet part and an altered embedder file: "
        "detected by sha256 on the cached-stage rerun, removed and recomputed",
    )


def test_an_altered_registered_model_file_is_refused(damaged) -> None:
    line = one_error_line(damaged.results["batch"])
    assert "refusing" in line and damaged.model_file.name in line, line
    assert not damaged.output.exists()  # nothing served from it
    faults.record(
        FAULT,
        tried=1,
        refused=1,
        note=f"an altered registered model file: batch inference refused ({line})",
    )


def test_an_altered_frozen_set_is_refused(stores, damaged) -> None:
    line = one_error_line(damaged.results["gated"])
    assert "frozen evaluation set" in line and str(damaged.frozen) in line, line
    # Nothing promoted or pointed at from the refused gate.
    assert (stores.registered / "LATEST").read_text() == damaged.latest
    faults.record(
        FAULT,
        tried=1,
        refused=1,
        note=f"an altered frozen evaluation set: the gate refused ({line})",
    )
