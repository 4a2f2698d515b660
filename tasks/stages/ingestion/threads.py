"""Thread reconstruction: link brand replies to the customer tweets they answer.

In the customer-support schema a brand reply names the tweet it answers in
``in_response_to_tweet_id``. A reply belongs to the nearest customer tweet up
its chain: directly (depth 1), or through the brand's own earlier replies (a
reply in several parts), at most ``max_depth`` steps up. Replies that cannot be
linked are counted by reason, never dropped silently: not a reply at all, an
answer to a tweet missing from the source, a chain that loops, or a chain
longer than ``max_depth``. The walk is vectorised: one lookup per depth level
over all replies at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NOT_A_REPLY = "not in reply to any tweet"
PARENT_MISSING = "answers a tweet that is not in the source"
NO_CUSTOMER = "thread starts with a brand tweet, not a customer's"
LOOP = "reply chain loops"
REPEATED = "reply id repeated"
REPLY_COLUMNS = ["reply_id", "in_response_to", "author_id", "text"]


def too_deep(max_depth: int) -> str:
    """The reason given to replies more than ``max_depth`` steps from a tweet."""
    return f"no customer tweet within {max_depth} replies up the thread"


@dataclass(frozen=True)
class LinkedReplies:
    """Replies linked to customer tweets, and the unlinked ones counted by reason."""

    linked: pd.DataFrame  # reply_id, tweet_id, depth, text
    unlinked: dict[str, int]

    @property
    def context(self) -> pd.DataFrame:
        """Per customer tweet id: its replies' texts joined (nearest first) and count."""
        ordered = self.linked.sort_values(["tweet_id", "depth"], kind="stable")
        ids = ordered["tweet_id"].to_numpy(dtype=object)
        texts = ordered["text"].to_numpy(dtype=object)
        boundary = np.r_[True, ids[1:] != ids[:-1]] if len(ids) else np.zeros(0, bool)
        starts = np.flatnonzero(boundary)
        sizes = np.diff(np.r_[starts, len(ids)]).astype("int64")
        context = texts[starts].copy()
        for group in np.flatnonzero(sizes > 1):  # most tweets have one reply
            first = starts[group]
            context[group] = "\n".join(texts[first : first + sizes[group]])
        index = pd.Index(ids[starts], dtype=ordered["tweet_id"].dtype, name="tweet_id")
        return pd.DataFrame(
            {
                "context": pd.Series(context, index=index, dtype=ordered["text"].dtype),
                "n_replies": pd.Series(sizes, index=index),
            }
        )


def link_replies(
    customer_ids: pd.Series, replies: pd.DataFrame, max_depth: int
) -> LinkedReplies:
    """Link each reply to the nearest customer tweet up its chain.

    ``replies`` has ``reply_id``, ``in_response_to`` (missing when the brand
    tweet answers nothing) and ``text``. Every reply ends up either linked or
    in exactly one unlinked reason.
    """
    replies = replies.reset_index(drop=True)
    repeated = replies["reply_id"].duplicated(keep="first").to_numpy()
    unique = replies[~repeated].reset_index(drop=True)
    # Plain object arrays: pandas' isin on Arrow-backed strings converts every
    # value of the pool to a Python object one by one (minutes at 1M replies).
    parent_of = pd.Series(
        unique["in_response_to"].to_numpy(dtype=object),
        index=pd.Index(unique["reply_id"].to_numpy(dtype=object), dtype=object),
    )
    customers = pd.Index(customer_ids.dropna().unique(), dtype=object)
    start = unique["reply_id"].to_numpy(dtype=object)
    current = unique["in_response_to"].astype(object)
    n = len(unique)
    target = np.full(n, None, dtype=object)
    depth = np.zeros(n, dtype=np.int64)
    reason = np.full(n, None, dtype=object)
    pending = current.notna().to_numpy().copy()
    reason[~pending] = NOT_A_REPLY
    for level in range(1, max_depth + 1):
        values = current.to_numpy()
        hit = pending & current.isin(customers).to_numpy()
        target[hit], depth[hit] = values[hit], level
        pending &= ~hit
        missing = pending & ~current.isin(parent_of.index).to_numpy()
        reason[missing] = PARENT_MISSING
        pending &= ~missing
        current = current.map(parent_of).astype(object)
        ended = pending & current.isna().to_numpy()
        reason[ended] = NO_CUSTOMER
        pending &= ~ended
        looped = pending & (current.to_numpy() == start)
        reason[looped] = LOOP
        pending &= ~looped
    reason[pending] = too_deep(max_depth)
    found = pd.notna(target)
    linked = unique.loc[found, ["reply_id", "text"]].assign(
        tweet_id=target[found].astype(str), depth=depth[found]
    )
    counts = pd.Series(reason[pd.notna(reason)]).value_counts()
    unlinked = {str(k): int(v) for k, v in counts.items()}
    if repeated.any():
        unlinked[REPEATED] = int(repeated.sum())
    return LinkedReplies(
        linked[["reply_id", "tweet_id", "depth", "text"]].reset_index(drop=True),
        unlinked,
    )
