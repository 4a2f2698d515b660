"""Save the notification block and the automations that tell people what happened.

On the Prefect API in ``PREFECT_API_URL``, this saves (or updates):

- ``custom-webhook/tweetflow-notify``: a webhook notification block that POSTs
  ``{"subject": ..., "text": ...}`` as JSON to ``--webhook-url`` (a Slack or
  Teams incoming webhook, a chat bridge, any HTTP endpoint);
- automation ``tweetflow: retrain failed``: a ``retrain`` flow run entered
  Failed or Crashed;
- automation ``tweetflow: model rejected``: the promotion gate refused a model
  (the ``tweetflow.model.rejected`` event, with the gate's reason).

Batch inference after a promotion is a deployment trigger in ``prefect.yaml``
(the ``tweetflow.model.promoted`` event), not an automation made here.
Saving again replaces the automations of the same names: the set-up stays one
copy however often it is deployed.

Usage: ``python -m deployments.automations --webhook-url URL`` (or
``$TWEETFLOW_NOTIFY_URL``); without a URL it says notifications are off.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import urlparse

BLOCK_NAME = "tweetflow-notify"
RETRAIN_FAILED = "tweetflow: retrain failed"
MODEL_REJECTED = "tweetflow: model rejected"
URL_ENV = "TWEETFLOW_NOTIFY_URL"


def save_notify_block(url: str, name: str = BLOCK_NAME) -> Any:  # a block id
    """Save the webhook notification block; return its block document id."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--webhook-url must be an http(s) URL, not {url!r}")
    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
        # The embedded set-up's receiver may be on this machine or the private network.
        allow_private_urls=True,
    )
    return block.save(name, overwrite=True)


def automations(block_id: Any) -> list[Any]:
    """The two automations, notifying through the block ``block_id``."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    from tasks.release.events import REJECTED

    failed = Automation(
        name=RETRAIN_FAILED,
        description="Notify when a retrain flow run fails or crashes.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "flow",
                "prefect.resource.name": "retrain",
            },
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="tweetflow: retrain {{ flow_run.name }} is "
                "{{ flow_run.state.name }}",
                body="Retrain flow run {{ flow_run.name }} ({{ flow_run.id }}) "
                "entered {{ flow_run.state.name }}: {{ flow_run.state.message }}",
            )
        ],
    )
    refused = Automation(
        name=MODEL_REJECTED,
        description="Notify when the promotion gate refuses a retrained model.",
        trigger=EventTrigger(
            expect={REJECTED},
            match={"prefect.resource.id": "tweetflow.model.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="tweetflow: the gate refused "
                "{{ event.payload.model_version }}",
                body="Run {{ event.payload.run_id }}: {{ event.payload.model_version }} "
                "stays unpromoted; the champion is still "
                "{{ event.payload.previous_champion }}. {{ event.payload.reason }}",
            )
        ],
    )
    return [failed, refused]


def save_automations(url: str) -> list[str]:
    """Save the block and (re)create the automations; return their names."""
    from prefect.client.orchestration import get_client

    block_id = save_notify_block(url)
    made = automations(block_id)
    with get_client(sync_client=True) as client:
        for automation in made:
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            automation.create()
    return [a.name for a in made]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.automations",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--webhook-url",
        default=os.environ.get(URL_ENV, ""),
        help=f"where notifications are POSTed (default: ${URL_ENV})",
    )
    args = parser.parse_args(argv)
    if not args.webhook_url:
        print(f"notifications off: set {URL_ENV} (or --webhook-url) to get them")
        return 0
    try:
        names = save_automations(args.webhook_url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved custom-webhook/{BLOCK_NAME} and automations: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
