"""Unit tests of tokenisation and cleaning, on cases taken from the real corpus."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import tasks.ml.text as text_module
from tasks.ml.cleaning import (
    MOJIBAKE_HINT,
    MOJIBAKE_HINT_RE2,
    SPACE_LIKE,
    SPACE_RUN_RE2,
    _clean_text_reference,
    clean_text,
)
from tasks.ml.text import URL, _tokenise_reference, token_counts, tokenise


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
    missing = token_counts(pd.Series(["a b", None, "x"], index=[7, 8, 9]))
    assert missing.tolist() == [2, 0, 1] and missing.index.tolist() == [7, 8, 9]
    assert missing.dtype == "int64"


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


# The fast paths against their specifications (the slow reference functions):
# tokens and cleaned text are cache keys and model inputs, so they must be equal
# for every tweet, not just similar.

OPTIONS = [
    {"keep_mentions": km, "remove_stop_words": sw, "keep_special_tokens": ks}
    for km in (True, False)
    for sw in (True, False)
    for ks in (True, False)
]

TRICKY = [
    "",
    " ",
    "\n\t \r",
    # URLs: schemes, www, glued to text, ended by Unicode spaces
    "see http://t.co/Eth0QpAIom, https://a.b/c?d=1&e=2 and www.x.com/y!",
    "urlhttp://x.yz here www.",
    "http://a.b\u00a0after http://c.d\u3000after http://e.f\u2028x",
    "HTTP://UPPER.case www.Mixed.Case",
    # mentions: long, glued, doubled, in words, digits
    "@united @Delta_Assist @a_very_long_handle_over_15 @@double a@b x@@y",
    "ab@cd @9ab @_x1 @ alone @a @ab email@example.com",
    "x@@@@@y @@@ a@@b@c \u00e9@x @\u00e9@ab _@_a 9@ab@@cd@",
    "RT @thehill: @the @9the 9the _the the@x the@@x",
    # hashtags
    "#DeflateGate #Coachella2015 ##double a#b #_x #1 #",
    # emoji, emoticons
    "\U0001f600\U0001f600 \u2764\ufe0f \U0001f468\u200d\U0001f469 ok \u2600x",
    ":) :-) ;-) :D :p 8) 8D:( :( :'( <3 ^_^ ^^ :):) :/ =| x:) :)x",
    "8oD 8pm :pizza 8-) 3:30pm",
    # mojibake, other scripts, Unicode case and digits
    "caf\u00c3\u00a9 \u00e2\u20ac\u2122 _\u00f4\u00d6\u00cd_\u00f4\u00cd\u00c8#imworkingout",
    "\u00e4\u00f3\u00ec_ \u00e4\u00f3_abc \u00d5\u00a2_\u008a\u00ce_ na\u00efve",
    "\u0130stanbul \u03a3\u039f\u03a3 stra\u00dfe \u0663\u0664 \uff21\uff22",
    # digits and numbers
    "1st 2nd 3rd 4th 10am 3pm 1,000 3.14 12k 5m 12amx a1b mh370 x9 99 _9 9_ab",
    "flight 1750 at 350pm, gate b12; 2015-04-01 #1 1:2:3 007bond",
    # stop words, elongation, apostrophes, special-token look-alikes
    "The thesis is about another theory; I'll never forgive Steely Dan's album",
    "Soooooo happy!!! yessss NOOOO aaa a aa iii",
    "don`t can\u2019t won't xxurl xxnum9 xx xxx xxxo @xxurl 9xxurl _xxuser",
    # html entities (tokenise gets them raw when the caller skips cleaning)
    "Exploding Kittens &amp; more SFO&gt;BOS &#39;quoted&#39; &lt;3 &nbsp;",
    "Trailing space ",
    "tab\tseparated\vand\x0cform\x1cfeed\x85nel",
]


def assert_tokenise_matches_reference(texts: pd.Series) -> None:
    for options in OPTIONS:
        pd.testing.assert_series_equal(
            tokenise(texts, **options), _tokenise_reference(texts, **options)
        )


def test_fast_tokenise_matches_reference_on_real_tweets(corpus: pd.DataFrame) -> None:
    raw = pd.concat(
        [corpus["text"].head(150), corpus["text"].sample(350, random_state=11)]
    )
    assert_tokenise_matches_reference(raw)
    assert_tokenise_matches_reference(clean_text(raw))


def test_token_lists_are_the_tokens_tokenise_joins_and_embed_alike(
    corpus: pd.DataFrame,
) -> None:
    """The serving path embeds token lists; they hold exactly the tokens of
    ``tokenise`` (none for an empty or missing text) and give the same vectors."""
    from tasks.ml.embedding import DocumentEmbedder

    texts = pd.concat(
        [
            clean_text(corpus["text"].sample(400, random_state=5)),
            pd.Series(["", "the and of", None, "@delta  my bag"], dtype="str"),
        ],
        ignore_index=True,
    )
    joined = tokenise(texts)
    lists = text_module.token_lists(texts)
    assert lists.to_pylist() == [
        t.split() if isinstance(t, str) else [] for t in joined
    ]
    words = pd.Index(sorted({w for t in joined.dropna() for w in t.split()}))
    rng = np.random.default_rng(1)
    embedder = DocumentEmbedder(
        vocab=words,
        vectors=rng.normal(size=(len(words), 8)).astype(np.float32),
        weights=rng.uniform(0.1, 1, len(words)).astype(np.float32),
        components=np.zeros((0, 8), dtype=np.float32),
    )
    by_strings = embedder.embed(joined.fillna(""), chunk=97)
    by_lists = embedder.embed(lists, chunk=97)  # slices that start mid-array
    assert np.array_equal(by_strings[0], by_lists[0])
    assert np.array_equal(by_strings[1], by_lists[1])
    assert by_lists[1][-4:].tolist()[:3] == [0, 0, 0]


def test_fast_tokenise_matches_reference_on_tricky_cases() -> None:
    texts = pd.Series(TRICKY, index=range(100, 100 + len(TRICKY)), name="text")
    assert_tokenise_matches_reference(texts)
    for text in TRICKY:  # alone: nothing leaks between neighbouring rows
        assert_tokenise_matches_reference(pd.Series([text]))


def test_fast_tokenise_matches_reference_on_random_text() -> None:
    rng = random.Random(3)
    alphabet = list("aAdDoOpPsSxX389_@#:;=<^()[]/\\|'`-*.,!? \n\t") + [
        "\u2019",
        "\u00e9",
        "\u00c3\u00a9",
        "\U0001f600",
        "\u200d",
        "\u3000",
        "http://t.co/x",
        "www.",
        "xx",
        "the",
        "about",
        "rt",
        "soooo",
        "1st",
        "3:30",
        "1,000",
        "pm",
    ]
    texts = pd.Series(
        ["".join(rng.choices(alphabet, k=rng.randint(0, 30))) for _ in range(1500)]
    )
    assert_tokenise_matches_reference(texts)


def test_fast_tokenise_keeps_index_name_and_missing_values() -> None:
    texts = pd.Series(["Hello @world", None, "", np.nan, 42], index=[9, 3, 3, 7, 1])
    texts.name = "text"
    tokens = tokenise(texts)
    assert tokens.tolist()[0] == "hello @world"
    assert tokens.isna().tolist() == [False, True, False, True, False]
    assert_tokenise_matches_reference(texts)
    assert_tokenise_matches_reference(pd.Series([], dtype="str"))
    assert_tokenise_matches_reference(pd.Series([], dtype=object))


CLEAN_TRICKY = [
    "",
    "   ",
    "line one\r\nline two\r  spaced\tout ",
    "\u00a0nbsp\u2003em\u200bzero\u200dwidth\ufeffbom\u2028ls\u3000ideo\u0085nel ",
    "ctrl\x00\x01\x1f\x7f\x9fchars",
    "mongolian\u180eseparator \u180e",
    "&amp; &gt; &#39; &#x27; &nbsp; &amp &notanentity; A&B",
    "caf\u00c3\u00a9 \u00e2\u20ac\u2122 \u00c2\u00a0 \u00e2\u0080\u0099 \u00c3 alone",
    "plain tweet, single spaces only",
]


def test_fast_clean_text_matches_reference(corpus: pd.DataFrame) -> None:
    raw = pd.concat(
        [
            corpus["text"].sample(500, random_state=5),
            pd.Series(CLEAN_TRICKY + [None], index=range(-20, -20 + 10)),
        ]
    )
    for fix in (True, False):
        pd.testing.assert_series_equal(
            clean_text(raw, fix), _clean_text_reference(raw, fix)
        )


def every_code_point() -> list[str]:
    return [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def test_re2_space_runs_equal_python_on_every_code_point() -> None:
    chars = every_code_point()
    text = "".join(f"x{c}y{c}{c}z {c}" for c in chars)
    re2 = pc.replace_substring_regex(
        pa.array([text], pa.large_string()), SPACE_RUN_RE2, " "
    )
    assert re2[0].as_py() == SPACE_LIKE.sub(" ", text)


def test_re2_mojibake_hint_equals_python() -> None:
    pairs = [
        chr(a) + chr(b)
        for a in range(0x80, 0x100)
        for b in [*range(0x60, 0x110), 0x20AC, 0x2019]
    ]
    re2 = pc.match_substring_regex(pa.array(pairs), MOJIBAKE_HINT_RE2)
    assert re2.to_pylist() == [bool(MOJIBAKE_HINT.search(p)) for p in pairs]


def test_re2_url_stops_at_python_whitespace_on_every_code_point() -> None:
    text = "".join(f"www.a{c}b " for c in every_code_point())
    re2 = pc.replace_substring_regex(
        pa.array([text], pa.large_string()), text_module._URL_RE2, " xxurl "
    )
    assert re2[0].as_py() == URL.sub(" xxurl ", text)


def test_tokenising_in_chunks_stores_the_frame_tokenising_at_once_gives(
    tmp_path,
) -> None:
    from tasks.infra.store import ArtifactStore
    from tasks.stages.preprocessing import (
        PreprocessingConfig,
        preprocess_frame,
        tokenise_to_store,
    )

    prepared = pd.DataFrame(
        {
            "tweet_id": [str(i) for i in range(25)],
            "split": "discovery",
            "text": [f"@united flight {i} cancelled again #fail" for i in range(25)],
            "context": ["" if i % 3 else "@c sorry about that" for i in range(25)],
            "n_replies": [0 if i % 3 else 1 for i in range(25)],
        }
    ).astype({"tweet_id": "str", "split": "str", "text": "str", "context": "str"})
    config = PreprocessingConfig()
    whole = preprocess_frame(prepared, config)
    store = ArtifactStore(tmp_path)
    ref = store.put_frame(prepared, "preparation")
    for chunk in (7, 100):
        stored, counts = tokenise_to_store(store, ref, config, chunk=chunk)
        assert store.open_frame(stored).num_row_groups == -(-25 // chunk)
        pd.testing.assert_frame_equal(store.get_frame(stored), whole)
        assert counts.rows == 25 and counts.tokens == whole["n_tokens"].sum()
        assert counts.with_context == 9 and counts.empty == 0
    none, counts = tokenise_to_store(store, store.put_frame(prepared[:0], "x"), config)
    assert store.get_frame(none).empty and counts.rows == 0


def test_the_copied_stop_words_are_scikit_learns() -> None:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from tasks.ml.text import SKLEARN_STOP_WORDS

    assert SKLEARN_STOP_WORDS == ENGLISH_STOP_WORDS
