"""The code MLflow saves with each registered version and runs to load it.

Never imported by tweetflow itself: ``mlflow.pyfunc.save_model`` copies this
file into the model and MLflow executes it when the model is loaded (models
from code: the model is this code, nothing of it is pickled).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from tasks.serving.pyfunc import (
    BUNDLE_ARTIFACT,
    DIGEST_KEY,
    predict_texts,
    texts_of,
)


class TweetflowModel(PythonModel):
    """A verified tweetflow bundle behind MLflow's interface."""

    def load_context(self, context: Any) -> None:
        """Load the bundle: every file is checked against its sha256 in
        ``manifest.json`` before anything is unpickled."""
        from pathlib import Path

        from tasks.serving.model import TweetClassifier
        from tasks.serving.pyfunc import check_digest

        bundle = Path(context.artifacts[BUNDLE_ARTIFACT])
        check_digest(bundle, (context.model_config or {}).get(DIGEST_KEY))
        self.model = TweetClassifier.load(bundle)

    def predict(
        self,
        context: Any,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Category, cluster id and confidence of each ``text`` (row order kept)."""
        return predict_texts(self.model, texts_of(model_input))


set_model(TweetflowModel())
