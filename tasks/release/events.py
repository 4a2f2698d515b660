"""Prefect events a release emits, for automations to follow.

``tweetflow.model.promoted``: the champion alias moved (gated, forced or by
hand); the payload names the version, the tweetflow and MLflow runs and the
previous champion. ``tweetflow.model.rejected``: the gate refused a model.
Both are about the resource ``tweetflow.model.<registered model name>``.
``prefect.yaml`` runs batch inference after a promotion (a deployment
trigger); ``deployments/automations.py`` notifies on a refusal.
"""

from __future__ import annotations

from typing import Any

PROMOTED = "tweetflow.model.promoted"
REJECTED = "tweetflow.model.rejected"


def model_resource(model_name: str) -> dict[str, str]:
    """The Prefect resource a release event is about."""
    return {
        "prefect.resource.id": f"tweetflow.model.{model_name}",
        "prefect.resource.name": model_name,
    }


def emit_release_event(event: str, model_name: str, payload: dict[str, Any]) -> None:
    """Emit one release event (a no-op where Prefect has no events client)."""
    from prefect.events import emit_event

    emit_event(
        event=event,
        resource=model_resource(model_name),
        payload={k: v for k, v in payload.items() if v is not None},
    )
