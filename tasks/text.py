"""Tweet normalisation and tokenisation, vectorised over a pandas column.

Shared by training (the preprocessing stage) and batch inference, so both see
exactly the same tokens. Every step is one pandas string operation over the
whole column with a compiled regex; there is no Python call per word.
"""

from __future__ import annotations

import re
from functools import lru_cache

import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

URL_TOKEN = "xxurl"
USER_TOKEN = "xxuser"
NUMBER_TOKEN = "xxnum"
EMOJI_TOKEN = "xxemoji"
SMILE_TOKEN = "xxsmile"
SAD_TOKEN = "xxsad"
SPECIAL_TOKENS = frozenset(
    {URL_TOKEN, USER_TOKEN, NUMBER_TOKEN, EMOJI_TOKEN, SMILE_TOKEN, SAD_TOKEN}
)
# Twitter noise words that carry no subject, on top of English stop words.
EXTRA_STOP_WORDS = frozenset(
    {
        "rt",
        "amp",
        "gt",
        "lt",
        "via",
        "just",
        "got",
        "like",
        "u",
        "ur",
        "im",
        "ive",
        "id",
        "ill",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "wasnt",
        "arent",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "havent",
        "hadnt",
        "youre",
        "youll",
        "youve",
        "theyre",
        "thats",
        "whats",
        "theres",
        "lets",
        "don",
        "doesn",
        "didn",
        "isn",
        "wasn",
        "ll",
        "ve",
    }
)

URL = re.compile(r"(?:https?://|www\.)\S+")
# Kept apart from letters so that "äóì" style mojibake never glues to a word.
MENTION = re.compile(r"(?<![\w@])@(\w{1,15})", re.ASCII)
HASHTAG = re.compile(r"(?<![\w#])#(\w+)", re.ASCII)
SMILEY = re.compile(r"(?<!\w)(?:[:;=8][\-o\*']?[\)\]dDpP3]|<3|\^_?\^)(?!\w)")
SADEY = re.compile(r"(?<!\w)(?:[:;=8][\-o\*']?[\(\[/\\|]|:'\()(?!\w)")
EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f\u200d]+", re.UNICODE
)
# Double-encoded text leaves runs of non-ASCII characters glued with "_"
# ("äó_", "Õ¢_\x8aÎ_"); no ASCII token can come out of them.
MOJIBAKE_RUN = re.compile(r"_*[^\x00-\x7f](?:[^\x00-\x7f]|_)*")
# Year or counter glued to a word, mostly in hashtags: coachella2015 -> coachella.
TRAILING_DIGITS = re.compile(r"(?<=[a-z])\d+\b")
ELONGATED = re.compile(r"([a-z])\1{2,}")
NUMBER = re.compile(
    r"(?<![a-z0-9])\d+(?:[.,:]\d+)*(?:st|nd|rd|th|s|am|pm|k|m)?(?![a-z])"
)
TOKEN = re.compile(r"@?[a-z][a-z0-9_]+|xx[a-z]+")
APOSTROPHE = re.compile(r"['\u2019`]")


def trie_pattern(words: set[str]) -> str:
    """A regex alternation of ``words`` factored as a trie.

    Python's regex engine tries alternatives one by one; sharing prefixes
    (``a(?:bout|bove|...)``) makes matching several times faster.
    """
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [
            re.escape(c) + build(child) for c, child in sorted(node.items()) if c
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


@lru_cache(maxsize=4)
def stop_word_pattern(extra: frozenset[str] = EXTRA_STOP_WORDS) -> re.Pattern[str]:
    """One compiled regex matching any stop word as a whole token."""
    words = {w.replace("'", "") for w in ENGLISH_STOP_WORDS} | set(extra)
    return re.compile(rf"(?<![\w@])(?:{trie_pattern(words)})(?![\w])")


def normalise(text: pd.Series, keep_mentions: bool = True) -> pd.Series:
    """Lower-case tweets and replace URLs, mentions, numbers, emoji and emoticons.

    Frequent @mentions (brands, news accounts) carry the subject of a tweet, so
    they are kept as ``@name`` tokens when ``keep_mentions``; rare ones drop out
    later through the embedding vocabulary's minimum count.
    """
    s = text.astype("str")
    s = s.str.replace(URL, f" {URL_TOKEN} ", regex=True)
    s = s.str.replace(SMILEY, f" {SMILE_TOKEN} ", regex=True)
    s = s.str.replace(SADEY, f" {SAD_TOKEN} ", regex=True)
    s = s.str.replace(EMOJI, f" {EMOJI_TOKEN} ", regex=True)
    s = s.str.replace(MOJIBAKE_RUN, " ", regex=True)
    mention = r" @\1 " if keep_mentions else f" {USER_TOKEN} "
    s = s.str.replace(MENTION, mention, regex=True)
    # #DeflateGate -> deflategate; camel case inside hashtags is common but the
    # joined form is what people search, so keep it whole.
    s = s.str.replace(HASHTAG, r" \1 ", regex=True)
    s = s.str.lower()
    s = s.str.replace(APOSTROPHE, "", regex=True)
    s = s.str.replace(ELONGATED, r"\1\1", regex=True)
    s = s.str.replace(TRAILING_DIGITS, "", regex=True)
    s = s.str.replace(NUMBER, f" {NUMBER_TOKEN} ", regex=True)
    return s


def tokenise(
    text: pd.Series,
    keep_mentions: bool = True,
    remove_stop_words: bool = True,
    keep_special_tokens: bool = False,
) -> pd.Series:
    """Turn raw tweets into space-joined tokens.

    Special tokens (``xxurl``, ``xxnum``, ...) mark what was there; they are
    dropped unless ``keep_special_tokens`` because they say nothing about a
    tweet's subject.
    """
    s = normalise(text, keep_mentions=keep_mentions)
    if remove_stop_words:
        s = s.str.replace(stop_word_pattern(), " ", regex=True)
    tokens = s.str.findall(TOKEN).str.join(" ")
    if not keep_special_tokens:
        tokens = tokens.str.replace(r"(?<!\S)xx[a-z]+(?!\S)", " ", regex=True)
        tokens = tokens.str.replace(r"\s+", " ", regex=True).str.strip()
    return tokens.astype("str")


def token_counts(tokens: pd.Series) -> pd.Series:
    """Number of tokens in each space-joined token string."""
    return tokens.str.count(" ").add(1).where(tokens.str.len().gt(0), 0).astype("int64")
