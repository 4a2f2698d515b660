"""The registered model as an MLflow pyfunc model, so MLflow's own tools load it.

``mlflow.pyfunc.load_model("models:/tweetflow-classifier@champion")`` returns
a model whose ``predict`` takes a frame with a ``text`` column and returns
``category``, ``cluster_id`` and ``confidence`` per row, exactly as batch
inference does (the same cleaning, tokens, word vectors and classifier). It
is logged *from code* (``mlflow_model_code.py`` holds the model class; no
pickled class): MLflow
saves that file and the tweetflow modules it needs, and the model bundle as
an artifact. ``load_context`` loads the bundle with ``TweetClassifier.load``,
which checks every file against its sha256 in ``manifest.json`` before
anything is unpickled; the bundle and its manifest stay the source of truth
(batch inference loads the same bundle with its own loader).

Layout of a registered version: ``MLmodel``, the code file, ``code/`` (the
``tasks`` and ``data_contracts`` packages), ``artifacts/bundle/`` (the
bundle with its manifest), the environment files and the input example.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tasks.infra.lazy import pd
from tasks.ml.bundle import MANIFEST_FILE

CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
BUNDLE_ARTIFACT = "bundle"
BUNDLE_IN_PYFUNC = Path("artifacts") / BUNDLE_ARTIFACT
PACKAGES = ("tasks", "data_contracts")
DIGEST_KEY = "manifest_sha256"  # in the MLmodel's model_config
INPUT_EXAMPLE = [
    "@united my flight was cancelled and nobody at the gate can rebook me",
    "the new iphone battery dies before lunch, any fix?",
]


def texts_of(model_input: Any) -> pd.Series:
    """The ``text`` column of a frame (or a list of texts) as strings."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError("the model input needs a 'text' column")
        texts = model_input["text"]
    else:
        texts = pd.Series(list(model_input))
    return texts.fillna("").astype("str").reset_index(drop=True)


def predict_texts(model: Any, texts: pd.Series) -> pd.DataFrame:
    """What batch inference predicts for these texts: cleaned as in training,
    then classified (``TweetClassifier.predict``)."""
    from tasks.ml.cleaning import clean_text

    scored = model.predict(clean_text(texts))
    return pd.DataFrame(
        {
            "category": scored["category"].astype("str").to_numpy(),
            "cluster_id": scored["cluster_id"].astype("int64").to_numpy(),
            "confidence": scored["confidence"].astype("float64").to_numpy(),
        }
    )


def signature() -> Any:  # mlflow.models.ModelSignature
    """``text`` (string) in; ``category``, ``cluster_id``, ``confidence`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema(
            [
                ColSpec("string", "category"),
                ColSpec("long", "cluster_id"),
                ColSpec("double", "confidence"),
            ]
        ),
    )


def check_digest(bundle: Path, expected: str | None) -> None:
    """Refuse a bundle whose manifest is not the one the model was saved with."""
    from tasks.infra.errors import ModelVerificationError
    from tasks.ml.bundle import bundle_digest

    if expected and bundle_digest(bundle) != expected:
        raise ModelVerificationError(
            f"refusing the model in {bundle.parent.parent}: its manifest does not "
            f"match the {DIGEST_KEY} it was saved with"
        )


def _clean_copy(package: Path, target: Path) -> Path:
    """The package's Python sources only (no caches) under ``target``."""
    shutil.copytree(
        package,
        target / package.name,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return target / package.name


def save_pyfunc(
    bundle: Path, target: Path, requirements: list[str], project_root: Path
) -> Path:
    """Write the MLflow pyfunc model of ``bundle`` into the new folder ``target``."""
    from tasks.infra.registry import _mlflow
    from tasks.ml.bundle import bundle_digest

    mlflow = _mlflow()
    if not (bundle / MANIFEST_FILE).is_file():
        raise ValueError(f"{bundle} is not a model bundle (no {MANIFEST_FILE})")
    sources = target.parent / f".{target.name}-code"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir(parents=True)
    # MLflow logs its input-example check at INFO to stderr: not news in a run.
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        code = [str(_clean_copy(project_root / p, sources)) for p in PACKAGES]
        # MLflow names the artifact's folder after its source: stage it as "bundle".
        staged = sources / "bundle"
        shutil.copytree(bundle, staged)
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=str(CODE_FILE),
            artifacts={BUNDLE_ARTIFACT: str(staged)},
            code_paths=code,
            signature=signature(),
            input_example=pd.DataFrame({"text": INPUT_EXAMPLE}),
            pip_requirements=requirements,
            model_config={DIGEST_KEY: bundle_digest(bundle)},
        )
    finally:
        quiet.setLevel(level)
        shutil.rmtree(sources, ignore_errors=True)
    return target


def bundle_of(folder: Path) -> Path:
    """The model bundle inside a registered version's files: the pyfunc model's
    ``artifacts/bundle``, or the folder itself (versions registered before
    the pyfunc model)."""
    inside = folder / BUNDLE_IN_PYFUNC
    return inside if (inside / MANIFEST_FILE).is_file() else folder
