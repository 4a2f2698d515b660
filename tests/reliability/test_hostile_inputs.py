"""Hostile inputs: a fixed corpus of nasty files through the real command line,
and property-based tests (Hypothesis) of ingestion and preparation in process.

Every case ends in a completed run with its bad rows quarantined with reasons,
or in one ``error:`` line and a non-zero exit: never a traceback, never a hang,
and rows read = accepted + quarantined + duplicates removed. The files are made
here from the bundled corpus' rows (no committed binaries).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.aws import aws_env, client, moto_server
from tests.reliability.commands import FAST
from tests.reliability.faults import record

ROOT = Path(__file__).resolve().parents[2]
FAULT = "hostile inputs"
TIMEOUT = 240  # seconds any one command may take: a hang fails the test
FIELD_BYTES = 5 << 20
PROPERTY = settings(
    derandomize=True,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command the tests start: offline, its own Prefect
    server and the store's own MLflow registry."""
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TWEETFLOW_LOCAL_SERVER": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
        # A loaded machine: Prefect's temporary server may take a while to start.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        **(extra or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    return env


def run_cli(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in the repository, bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env or command_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_refused(done: subprocess.CompletedProcess[str], expected: str) -> str:
    """One ``error:`` line naming ``expected``, a non-zero exit, no traceback."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0, done.stdout + done.stderr
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert re.search(expected, errors[0]), errors[0]
    return errors[0]


def assert_completed(done: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, no traceback, no error line."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert "Traceback" not in output, output[-5000:]
    assert not [line for line in done.stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------
# The fixed corpus of nasty files
# ---------------------------------------------------------------------------


def csv_text(rows: pd.DataFrame, endings: list[str] | None = None) -> str:
    """``tweet_id,text`` rows as CSV, every field quoted; ``endings`` cycles the
    line endings row by row."""
    endings = endings or ["\n"]
    out = io.StringIO()
    out.write('"tweet_id","text"' + endings[0])
    for i, (tweet_id, text) in enumerate(zip(rows["tweet_id"], rows["text"])):
        buffer = io.StringIO()
        csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="").writerow(
            [tweet_id, text]
        )
        out.write(buffer.getvalue() + endings[(i + 1) % len(endings)])
    return out.getvalue()


@pytest.fixture(scope="module")
def rows(corpus: pd.DataFrame) -> pd.DataFrame:
    """Distinct real tweets whose text Windows-1252 can write, shuffled."""
    distinct = corpus.drop_duplicates("text")
    writable = distinct[
        distinct["text"].map(lambda t: _encodes(t, "cp1252"))
        & ~distinct["text"].str.contains("\r", regex=False)
    ]
    return writable.sample(700, random_state=13)[["tweet_id", "text"]].reset_index(
        drop=True
    )


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def must_work(rows: pd.DataFrame) -> dict[str, tuple[bytes, int, int]]:
    """Files that must simply work: name -> (bytes, rows, rows to quarantine)."""
    parts = iter(range(0, 600, 40))

    def take(n: int = 40) -> pd.DataFrame:
        start = next(parts)
        return rows.iloc[start : start + n]

    plain = take(120)
    next(parts), next(parts)  # plain took three slices
    big = take()
    big = pd.concat(
        [big, pd.DataFrame({"tweet_id": ["big-1"], "text": ["x" * FIELD_BYTES]})]
    )
    nul = take().copy()
    nul.iloc[0, 1] = nul.iloc[0, 1][:10] + "\x00" + nul.iloc[0, 1][10:]
    nul = pd.concat(
        [nul, pd.DataFrame({"tweet_id": ["nul-only"], "text": ["\x00\x00\x00"]})]
    )
    zipped = io.BytesIO()
    zip_rows = take()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("twcs/", "")  # the folder, as Kaggle's archive has it
        archive.writestr("twcs/twcs.csv", csv_text(zip_rows))
    files = {
        "plain.csv": (csv_text(plain).encode(), len(plain), 0),
        "utf16-bom.csv": (csv_text(u16 := take()).encode("utf-16"), len(u16), 0),
        "windows-1252.csv": (csv_text(w := take()).encode("cp1252"), len(w), 0),
        "mixed-endings.csv": (
            csv_text(m := take(), ["\r\n", "\n", "\r"]).encode(),
            len(m),
            0,
        ),
        "field-5mb.csv": (csv_text(big).encode(), len(big), 1),
        "nul-bytes.csv": (csv_text(nul).encode(), len(nul), 1),
        "tweets.csv.gz": (gzip.compress(csv_text(g := take()).encode()), len(g), 0),
        "tweets.csv.bz2": (bz2.compress(csv_text(b := take()).encode()), len(b), 0),
        "twcs.zip": (zipped.getvalue(), len(zip_rows), 0),
    }
    return files


def must_refuse(rows: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    """Files the pre-flight refuses: name -> (bytes, what the error line says)."""
    rng = random.Random(4)
    base = csv_text(rows.iloc[:30])
    wide = ",".join(["tweet_id", "text", *(f"c{i}" for i in range(100_000))])
    wrong_schema = io.BytesIO()
    pd.DataFrame({"user": [1, 2], "score": [0.5, 0.7]}).to_parquet(wrong_schema)
    lines = [json.dumps({"tweet_id": str(i), "text": t}) for i, t in enumerate("ab")]
    two = io.BytesIO()
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", base)
        archive.writestr("b.csv", base)
    return {
        "random.csv": (
            bytes(rng.randrange(256) for _ in range(64 << 10)),
            "does not look like text",
        ),
        "empty.csv": (b"", r"is empty \(0 bytes\)"),
        "header-only.csv": (b"tweet_id,text\r\n", "holds no rows, only a header"),
        "columns-100k.csv": (
            (wide + "\n" + ",".join(["1", "hello"] + ["v"] * 100_000) + "\n").encode(),
            "100,002 columns",
        ),
        "wrong-schema.parquet": (wrong_schema.getvalue(), "no text column 'text'"),
        "not-json.jsonl": (
            (lines[0] + "\n{not json at all\n" + lines[1] + "\n").encode(),
            "line 2 is not JSON",
        ),
        "two-files.zip": (two.getvalue(), "holds 2 .*exactly one"),
        "truncated.csv.gz": (
            gzip.compress(base.encode())[:200],
            "cannot decompress .* truncated",
        ),
    }


def unbalanced_quotes(rows: pd.DataFrame) -> bytes:
    """A quoted field never closed, after the rows the pre-flight reads."""
    return (csv_text(rows.iloc[:30]) + '"open-1","this quote never closes\n').encode()


# ---------------------------------------------------------------------------
# In process: every nasty file through ingestion and preparation
# ---------------------------------------------------------------------------


def ingest_and_prepare(source: str, encoding: str = "auto") -> dict[str, int]:
    """check_source, ingest_frame and prepare_frame; the counts, accounting checked."""
    from tasks.stages.ingestion import IngestionConfig, check_source, ingest_frame
    from tasks.stages.preparation import PreparationConfig, prepare_frame

    config = IngestionConfig(encoding=encoding)
    check_source(source, config)
    ingested = ingest_frame(source, config)
    prepared = prepare_frame(ingested.raw, PreparationConfig())
    counts = {
        "rows_read": ingested.rows_read,
        "accepted": len(prepared.prepared),
        "quarantined": len(ingested.quarantine) + len(prepared.quarantine),
        "duplicates_removed": prepared.duplicates_removed,
    }
    assert ingested.rows_read == len(ingested.raw) + len(ingested.quarantine)
    assert counts["rows_read"] == (
        counts["accepted"] + counts["quarantined"] + counts["duplicates_removed"]
    ), counts
    for frame in (ingested.quarantine, prepared.quarantine):
        assert frame["reason"].str.len().gt(0).all()
    return counts


def test_nasty_files_in_process(rows: pd.DataFrame, tmp_path: Path) -> None:
    from tasks.infra.errors import InputError

    for name, (data, n, bad) in must_work(rows).items():
        (tmp_path / name).write_bytes(data)
        counts = ingest_and_prepare(str(tmp_path / name))
        assert counts["rows_read"] == n, name
        assert counts["quarantined"] == bad, (name, counts)
    for name, (data, expected) in must_refuse(rows).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=expected):
            ingest_and_prepare(str(tmp_path / name))
    (tmp_path / "unbalanced.csv").write_bytes(unbalanced_quotes(rows))
    with pytest.raises(InputError, match="EOF inside string starting at row 31"):
        ingest_and_prepare(str(tmp_path / "unbalanced.csv"))


def test_windows_1252_given_as_utf8_suggests_cp1252(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    from tasks.infra.errors import InputError

    path = tmp_path / "windows-1252.csv"
    path.write_bytes(csv_text(rows.iloc[:30]).encode("cp1252") + b'"x","caf\xe9"\n')
    with pytest.raises(InputError, match="--ingestion.encoding cp1252"):
        ingest_and_prepare(str(path), encoding="utf-8")
    assert ingest_and_prepare(str(path))["rows_read"] == 31  # auto: read as cp1252


# ---------------------------------------------------------------------------
# Property-based: arbitrary texts, cells and bytes
# ---------------------------------------------------------------------------

PROPERTY_EXAMPLES: list[str] = []  # per example: "read" or "refused"


def _scratch(write: Callable[[Path], None], name: str = "source.csv") -> Path:
    """A fresh file in a fresh directory (Hypothesis runs many examples)."""
    directory = Path(tempfile.mkdtemp(prefix="hostile-"))
    path = directory / name
    write(path)
    return path


@PROPERTY
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=25))
def test_any_text_in_the_text_field_is_read_and_accounted(texts: list[str]) -> None:
    from tasks.infra.errors import InputError

    frame = pd.DataFrame({"tweet_id": [f"t{i}" for i in range(len(texts))]})
    frame["text"] = texts

    def write(path: Path) -> None:
        path.write_bytes(csv_text(frame).encode("utf-8"))

    try:
        counts = ingest_and_prepare(str(_scratch(write)))
    except InputError:
        PROPERTY_EXAMPLES.append("refused")
        # Only a file whose every text is missing, or that reads as binary.
        assert all(t == "" for t in texts) or any(
            ch < " " and ch not in "\t\n\r" for t in texts for ch in t
        )
        return
    PROPERTY_EXAMPLES.append("read")
    assert counts["rows_read"] == len(texts)  # every row written is read


@PROPERTY
@given(
    cells=st.lists(
        st.lists(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
            min_size=3,
            max_size=3,
        ),
        min_size=1,
        max_size=15,
    ),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_any_csv_cells_are_read_row_for_row(
    cells: list[list[str]], quoting: int
) -> None:
    from tasks.infra.errors import InputError

    def write(path: Path) -> None:
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, quoting=quoting)
            writer.writerow(["tweet_id", "text", "extra"])
            writer.writerows(cells)

    try:
        counts = ingest_and_prepare(str(_scratch(write)))
    except InputError:
        PROPERTY_EXAMPLES.append("refused")
        return
    PROPERTY_EXAMPLES.append("read")
    assert counts["rows_read"] == len(cells)


@PROPERTY
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".csv", ".jsonl"]))
def test_any_bytes_end_in_an_input_error_or_accounted_rows(
    data: bytes, suffix: str
) -> None:
    from tasks.infra.errors import InputError

    path = _scratch(lambda p: p.write_bytes(b"tweet_id,text\n" + data), "x" + suffix)
    try:
        ingest_and_prepare(str(path))
    except InputError:
        PROPERTY_EXAMPLES.append("refused")
        return
    PROPERTY_EXAMPLES.append("read")


def test_property_cases_recorded() -> None:
    """The property tests' examples, in the fault table (they ran above)."""
    read, refused = PROPERTY_EXAMPLES.count("read"), PROPERTY_EXAMPLES.count("refused")
    record(
        FAULT,
        tried=len(PROPERTY_EXAMPLES),
        recovered=read,
        refused=refused,
        note=f"{len(PROPERTY_EXAMPLES)} Hypothesis examples (arbitrary texts, CSV "
        f"cells and bytes) in process: {read} read with every row accounted, "
        f"{refused} refused with an InputError",
    )


# ---------------------------------------------------------------------------
# The real command line
# ---------------------------------------------------------------------------


# The command line's own entry point (what ``python -m flows.retrain`` runs),
# once per file in one process: the pre-flight refusals without paying the
# interpreter's start-up for each.
DRIVER = """
import contextlib, io, json, sys, traceback
from flows.cli import retrain_main
out = {}
for source, artifacts in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = retrain_main(["--source", source, "--artifacts-dir", artifacts])
        except BaseException:
            traceback.print_exc()
            code = -1
    out[source] = [code, err.getvalue()]
print(json.dumps(out))
"""


def test_cli_refuses_nasty_files_before_the_flow(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    cases = must_refuse(rows)
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    # One through ``python -m flows.retrain`` itself, the rest through its entry
    # point in one process.
    done = run_cli(
        "flows.retrain",
        "--source",
        str(tmp_path / "random.csv"),
        "--artifacts-dir",
        str(tmp_path / "artifacts-random"),
    )
    assert done.returncode == 2
    assert_refused(done, cases["random.csv"][1])
    record(FAULT, refused=1)
    jobs = [(str(tmp_path / n), str(tmp_path / f"artifacts-{n}")) for n in cases]
    driven = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(jobs)],
        cwd=ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert driven.returncode == 0, driven.stderr
    results = json.loads(driven.stdout.splitlines()[-1])
    for name, (_, expected) in cases.items():
        code, stderr = results[str(tmp_path / name)]
        assert code == 2, (name, stderr)
        assert_refused(subprocess.CompletedProcess([], code, "", stderr), expected)
        assert not (tmp_path / f"artifacts-{name}" / "runs").exists()
        if name != "random.csv":
            record(FAULT, refused=1)


@pytest.fixture(scope="module")
def retrained(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """One real retrain over a directory holding every must-work file."""
    work = tmp_path_factory.mktemp("hostile")
    source = work / "incoming"
    source.mkdir()
    files = must_work(rows)
    for name, (data, _, _) in files.items():
        (source / name).write_bytes(data)
    (source / "notes.txt").write_text("not a data file: ignored by extension\n")
    artifacts = work / "artifacts"
    done = run_cli(
        "flows.retrain",
        "--source",
        str(source),
        "--artifacts-dir",
        str(artifacts),
        *FAST,
    )
    return files, artifacts, done


def test_cli_retrain_reads_every_must_work_file(retrained) -> None:
    files, artifacts, done = retrained
    assert_completed(done)
    run_id = (artifacts / "LATEST").read_text().strip()
    counts = json.loads((artifacts / "runs" / run_id / "run.json").read_text())[
        "counts"
    ]
    assert counts["rows_read"] == sum(n for _, n, _ in files.values())
    assert counts["rows_read"] == (
        counts["accepted"] + counts["quarantined"] + counts["duplicates_removed"]
    )
    quarantine = pd.read_parquet(artifacts / "runs" / run_id / "quarantine.parquet")
    assert counts["quarantined"] == len(quarantine) >= 2
    reasons = set(quarantine["reason"])
    assert any("longer than" in r for r in reasons), reasons  # the 5 MB field
    assert any("empty after cleaning" in r for r in reasons), reasons  # NUL only
    assert set(quarantine["source"]) >= {"field-5mb.csv", "nul-bytes.csv"}
    record(
        FAULT,
        tried=len(files),
        recovered=len(files),
        note="one retrain over a directory of "
        + ", ".join(files)
        + f": {counts['rows_read']} rows read, {counts['quarantined']} quarantined "
        "with reasons",
    )


def test_cli_batch_inference_reads_compressed_files(
    retrained, rows: pd.DataFrame, tmp_path: Path
) -> None:
    _, artifacts, done = retrained
    assert_completed(done)
    new = rows.iloc[450:]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv.gz").write_bytes(gzip.compress(csv_text(new.iloc[:60]).encode()))
    (inbox / "b.csv.bz2").write_bytes(bz2.compress(csv_text(new.iloc[60:120]).encode()))
    with zipfile.ZipFile(inbox / "c.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("c/c.csv", csv_text(new.iloc[120:180]))
    output = tmp_path / "predictions.parquet"
    done = run_cli(
        "flows.batch_inference",
        "--source",
        str(inbox),
        "--output",
        str(output),
        "--artifacts-dir",
        str(artifacts),
    )
    assert_completed(done)
    found = re.search(
        r"(\d+) rows read, (\d+) predicted, (\d+) quarantined, (\d+) exact repeats",
        done.stdout,
    )
    assert found, done.stdout
    read, predicted, quarantined, repeats = map(int, found.groups())
    assert read == 180 and read == predicted + quarantined + repeats
    assert len(pd.read_parquet(output)) == predicted
    record(FAULT, tried=3, recovered=3, note="batch inference on .csv.gz, .bz2, .zip")


def test_cli_refuses_an_unclosed_quote_inside_the_flow(
    rows: pd.DataFrame, tmp_path: Path
) -> None:
    """Past the pre-flight's rows: the ingestion task refuses, one line, no traceback."""
    path = tmp_path / "unbalanced.csv"
    path.write_bytes(unbalanced_quotes(rows))
    done = run_cli(
        "flows.retrain", "--source", str(path), "--artifacts-dir", str(tmp_path / "a")
    )
    assert done.returncode == 1
    assert_refused(done, "EOF inside string starting at row 31")
    assert not (tmp_path / "a" / "LATEST").exists()
    record(FAULT, refused=1, note="an unclosed quote: refused by ingestion, row named")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with a ``tweets`` bucket; yields its AWS settings."""
    with moto_server(tmp_path_factory.mktemp("moto")) as aws:
        client("s3", aws).create_bucket(Bucket="tweets")
        yield aws


def test_cli_refuses_an_empty_s3_prefix(moto, tmp_path: Path) -> None:
    done = run_cli(
        "flows.retrain",
        "--source",
        "s3://tweets/empty/",
        "--artifacts-dir",
        str(tmp_path / "a"),
        env=command_env(aws_env(os.environ, moto)),
    )
    assert done.returncode == 2
    assert_refused(done, r"s3://tweets/empty/ holds no objects")
    record(FAULT, refused=1, note="an s3:// prefix with zero objects")


def test_s3_prefix_lists_compressed_objects(moto, rows: pd.DataFrame) -> None:
    import s3fs

    boto = client("s3", moto)
    files = must_work(rows)
    for name in ("tweets.csv.gz", "tweets.csv.bz2", "twcs.zip"):
        boto.put_object(Bucket="tweets", Key=f"zipped/{name}", Body=files[name][0])
    boto.put_object(Bucket="tweets", Key="zipped/_SUCCESS", Body=b"")
    with pytest.MonkeyPatch.context() as env:
        for key, value in aws_env({}, moto).items():
            env.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            counts = ingest_and_prepare("s3://tweets/zipped/")
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert counts["rows_read"] == 120
    record(FAULT, tried=3, recovered=3, note="an S3 prefix of .csv.gz, .bz2, .zip")
