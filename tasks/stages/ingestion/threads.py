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

from tasks.infra.lazy import np, pd

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
    """Replies linked to customer tweets, and the unlinked ones counted by reason.

    ``linked`` also holds ``row``: the position, in the customer ids given to
    ``link_replies``, of the first tweet with the id the reply answers.
    """

    linked: pd.DataFrame  # reply_id, tweet_id, depth, text, row
    unlinked: dict[str, int]

    def per_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows with replies, their replies' texts joined (nearest first) and
        their number of replies."""
        order = np.lexsort(
            (self.linked["depth"].to_numpy(), self.linked["row"].to_numpy())
        )
        rows = self.linked["row"].to_numpy()[order]
        texts = self.linked["text"].to_numpy(dtype=object)[order]
        boundary = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else rows > 0
        starts = np.flatnonzero(boundary)
        sizes = np.diff(np.r_[starts, len(rows)]).astype("int64")
        context = texts[starts].copy()
        for group in np.flatnonzero(sizes > 1):  # most tweets have one reply
            first = starts[group]
            context[group] = "\n".join(texts[first : first + sizes[group]])
        return rows[starts], context, sizes

    @property
    def context(self) -> pd.DataFrame:
        """Per customer tweet id: its replies' texts joined (nearest first) and count."""
        rows, context, sizes = self.per_row()
        first = self.linked.drop_duplicates("row").set_index("row")["tweet_id"]
        index = pd.Index(first.loc[rows].to_numpy(), dtype="str", name="tweet_id")
        return pd.DataFrame(
            {
                "context": pd.Series(context, index=index, dtype="str"),
                "n_replies": pd.Series(sizes, index=index),
            }
        )


def link_replies(
    customer_ids: pd.Series, replies: pd.DataFrame, max_depth: int
) -> LinkedReplies:
    """Link each reply to the nearest customer tweet up its chain.

    ``replies`` has ``reply_id``, ``in_response_to`` (missing when the brand
    tweet answers nothing) and ``text``. Every reply ends up either linked or
    in exactly one unlinked reason. Ids are hashed once into integer codes; the
    walk up the chains is then array lookups, one per depth level.
    """
    replies = replies.reset_index(drop=True)
    repeated = replies["reply_id"].duplicated(keep="first").to_numpy()
    unique = replies[~repeated].reset_index(drop=True)
    n_customers, n = len(customer_ids), len(unique)
    codes, ids = pd.factorize(
        pd.concat(
            [
                customer_ids.astype("str"),
                unique["reply_id"].astype("str"),
                unique["in_response_to"].astype("str"),
            ],
            ignore_index=True,
        )
    )
    customer_code = codes[:n_customers]
    reply_code = codes[n_customers : n_customers + n]
    parent_code = codes[n_customers + n :]
    first_row = np.full(len(ids) + 1, -1, dtype=np.int64)  # +1: code -1 lands last
    seen, first = np.unique(customer_code, return_index=True)
    first_row[seen[seen >= 0]] = first[seen >= 0]
    reply_of = np.full(len(ids) + 1, -1, dtype=np.int64)
    reply_of[reply_code] = np.arange(n)
    current = parent_code.copy()
    target = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    reason = np.full(n, None, dtype=object)
    pending = current >= 0
    reason[~pending] = NOT_A_REPLY
    for level in range(1, max_depth + 1):
        hit = pending & (first_row[current] >= 0)
        target[hit], depth[hit] = current[hit], level
        pending &= ~hit
        parent_reply = reply_of[current]
        missing = pending & (parent_reply < 0)
        reason[missing] = PARENT_MISSING
        pending &= ~missing
        current = np.where(pending, parent_code[parent_reply], -1)
        ended = pending & (current < 0)
        reason[ended] = NO_CUSTOMER
        pending &= ~ended
        looped = pending & (current == reply_code)
        reason[looped] = LOOP
        pending &= ~looped
    reason[pending] = too_deep(max_depth)
    found = target >= 0
    linked = unique.loc[found, ["reply_id", "text"]].assign(
        # Taken from the codes' own (Arrow) strings: no Python string per id.
        tweet_id=ids.take(target[found]).astype("str").array,
        depth=depth[found],
        row=first_row[target[found]],
    )
    counts = pd.Series(reason[pd.notna(reason)]).value_counts()
    unlinked = {str(k): int(v) for k, v in counts.items()}
    if repeated.any():
        unlinked[REPEATED] = int(repeated.sum())
    return LinkedReplies(
        linked[["reply_id", "tweet_id", "depth", "text", "row"]].reset_index(drop=True),
        unlinked,
    )
