"""Release settings: the registry, the frozen evaluation set and the gate's rules.

Read from ``config/promotion.yaml`` (its values are these defaults; a test keeps
them equal). The promote mode is not here: it is the retrain's ``promote``
parameter, one source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from tasks.infra.errors import RegistryError
from tasks.infra.registry import RegistryConfig
from tasks.release.gate import GateConfig


class ReleaseConfig(RegistryConfig):
    """Where models are registered, what they are gated on and how."""

    frozen_evaluation: str | None = Field(
        None,
        description="Parquet file of tweets (tweet_id, text) both models are scored "
        "on; empty: registry/frozen_evaluation.parquet in the artifact store, frozen "
        "from the first gated run's evaluation split.",
    )
    frozen_size: int = Field(
        20_000,
        ge=100,
        description="Tweets frozen from the first gated run's evaluation split (a "
        "seeded sample when it holds more): enough to estimate every rule, and "
        "scoring two models on them stays quick at any corpus size.",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig, description="Promotion gate rules."
    )


def load_release_config(
    path: str | Path | None = None, **changes: Any
) -> ReleaseConfig:
    """Release settings from a YAML file (``config/promotion.yaml``) plus overrides.

    A bad file or value is one ``RegistryError`` line.
    """
    data: dict[str, Any] = {}
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise RegistryError(f"promotion config {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RegistryError(f"promotion config {file}: {exc}") from None
    data.update(changes)
    try:
        return ReleaseConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RegistryError(f"promotion config: {where}: {first['msg']}") from None
