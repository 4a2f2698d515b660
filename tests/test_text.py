"""Unit tests of tokenisation and cleaning, on cases taken from the real corpus."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.preparation import clean_text
from tasks.text import token_counts, tokenise


def tok(text: str, **kwargs: bool) -> list[str]:
    return tokenise(pd.Series([text]), **kwargs).iloc[0].split()


def test_urls_are_dropped_and_mentions_kept() -> None:
    tokens = tok(
        "RT @thehill: Justice Department cites 18th century federal law to get "
        "@Apple to unlock iPhones: http://t.co/Eth0QpAIom"
    )
    assert "@thehill" in tokens and "@apple" in tokens
    assert not any("http" in t or "t.co" in t for t in tokens)
    assert "rt" not in tokens and "to" not in tokens
    assert "iphones" in tokens


def test_mentions_become_placeholder_when_not_kept() -> None:
    text = "@united you guys suck!"
    assert "@united" not in tok(text, keep_mentions=False)
    assert tok(text, keep_mentions=False) == ["guys", "suck"]


def test_hashtags_keep_their_word_without_the_year() -> None:
    tokens = tok("I want to go to #Coachella2015 in California")
    assert tokens == ["want", "coachella", "california"]


def test_mojibake_runs_do_not_leak_into_tokens() -> None:
    tokens = tok(
        "Just because I wear my @NBCSports #Boston shirt to the #gym does NOT mean "
        "you can ask my opinion on #DeflateGate  _\u00f4\u00d6\u00cd_\u00f4\u00cd\u00c8#imworkingout"
    )
    assert tokens[-2:] == ["deflategate", "imworkingout"]
    assert all(t.isascii() for t in tokens)


def test_numbers_emoticons_and_emoji_are_not_words() -> None:
    tokens = tok("@united 30 of us on flight 1750 :) ;-) \U0001f600 at 350pm")
    assert tokens == ["@united", "flight"]


def test_elongated_words_are_shortened() -> None:
    assert tok("Soooooo happy with @JetBlue!!!") == ["soo", "happy", "@jetblue"]


def test_stop_words_removed_only_as_whole_words() -> None:
    tokens = tok("The thesis is about another theory")
    assert "the" not in tokens and "about" not in tokens
    assert "thesis" in tokens and "theory" in tokens


def test_apostrophes_join_contractions() -> None:
    assert tok("I'll never forgive Steely Dan's album") == [
        "forgive",
        "steely",
        "dans",
        "album",
    ]


def test_token_counts_handle_empty_strings() -> None:
    counts = token_counts(pd.Series(["a b c", "", "one"]))
    assert counts.tolist() == [3, 0, 1]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "Catch up: #DeflateGate, Exploding Kittens &amp; more",
            "Catch up: #DeflateGate, Exploding Kittens & more",
        ),
        ("line one\r\nline two\r  spaced\tout ", "line one line two spaced out"),
        ("SFO&gt;BOS  no wifi", "SFO>BOS no wifi"),
        ("caf\u00c3\u00a9 on the way", "caf\u00e9 on the way"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(pd.Series([raw])).iloc[0] == clean


def test_tokenise_is_row_aligned_on_real_tweets(corpus: pd.DataFrame) -> None:
    texts = corpus["text"].head(500)
    tokens = tokenise(texts)
    assert len(tokens) == len(texts)
    assert tokens.index.equals(texts.index)
    assert tokens.str.len().gt(0).mean() > 0.95
