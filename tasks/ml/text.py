"""Tweet normalisation and tokenisation, vectorised over a pandas column.

Shared by training (the preprocessing stage) and batch inference, so both see
exactly the same tokens. ``normalise`` and ``_tokenise_reference`` state the
rules, one pandas string operation per step. ``tokenise`` returns exactly the
same tokens several times faster: each rule runs once over the whole column,
as an RE2 regex in Arrow where RE2 can state it exactly, otherwise as one
Python regex over the rows (all, or those an RE2 prefilter says can match)
joined into a single string; tokens are then cut and filtered as one Arrow
array of runs. There is no Python call per word (nor per tweet).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from tasks.infra.lazy import np, pa, pc, pd
from tasks.ml.arrow import arrow_strings

# scikit-learn's English stop words (sklearn.feature_extraction.text), copied so
# that tokenising does not import scikit-learn (about 1 s); a test keeps the
# two equal.
SKLEARN_STOP_WORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "across",
        "after",
        "afterwards",
        "again",
        "against",
        "all",
        "almost",
        "alone",
        "along",
        "already",
        "also",
        "although",
        "always",
        "am",
        "among",
        "amongst",
        "amoungst",
        "amount",
        "an",
        "and",
        "another",
        "any",
        "anyhow",
        "anyone",
        "anything",
        "anyway",
        "anywhere",
        "are",
        "around",
        "as",
        "at",
        "back",
        "be",
        "became",
        "because",
        "become",
        "becomes",
        "becoming",
        "been",
        "before",
        "beforehand",
        "behind",
        "being",
        "below",
        "beside",
        "besides",
        "between",
        "beyond",
        "bill",
        "both",
        "bottom",
        "but",
        "by",
        "call",
        "can",
        "cannot",
        "cant",
        "co",
        "con",
        "could",
        "couldnt",
        "cry",
        "de",
        "describe",
        "detail",
        "do",
        "done",
        "down",
        "due",
        "during",
        "each",
        "eg",
        "eight",
        "either",
        "eleven",
        "else",
        "elsewhere",
        "empty",
        "enough",
        "etc",
        "even",
        "ever",
        "every",
        "everyone",
        "everything",
        "everywhere",
        "except",
        "few",
        "fifteen",
        "fifty",
        "fill",
        "find",
        "fire",
        "first",
        "five",
        "for",
        "former",
        "formerly",
        "forty",
        "found",
        "four",
        "from",
        "front",
        "full",
        "further",
        "get",
        "give",
        "go",
        "had",
        "has",
        "hasnt",
        "have",
        "he",
        "hence",
        "her",
        "here",
        "hereafter",
        "hereby",
        "herein",
        "hereupon",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "however",
        "hundred",
        "i",
        "ie",
        "if",
        "in",
        "inc",
        "indeed",
        "interest",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "keep",
        "last",
        "latter",
        "latterly",
        "least",
        "less",
        "ltd",
        "made",
        "many",
        "may",
        "me",
        "meanwhile",
        "might",
        "mill",
        "mine",
        "more",
        "moreover",
        "most",
        "mostly",
        "move",
        "much",
        "must",
        "my",
        "myself",
        "name",
        "namely",
        "neither",
        "never",
        "nevertheless",
        "next",
        "nine",
        "no",
        "nobody",
        "none",
        "noone",
        "nor",
        "not",
        "nothing",
        "now",
        "nowhere",
        "of",
        "off",
        "often",
        "on",
        "once",
        "one",
        "only",
        "onto",
        "or",
        "other",
        "others",
        "otherwise",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "part",
        "per",
        "perhaps",
        "please",
        "put",
        "rather",
        "re",
        "same",
        "see",
        "seem",
        "seemed",
        "seeming",
        "seems",
        "serious",
        "several",
        "she",
        "should",
        "show",
        "side",
        "since",
        "sincere",
        "six",
        "sixty",
        "so",
        "some",
        "somehow",
        "someone",
        "something",
        "sometime",
        "sometimes",
        "somewhere",
        "still",
        "such",
        "system",
        "take",
        "ten",
        "than",
        "that",
        "the",
        "their",
        "them",
        "themselves",
        "then",
        "thence",
        "there",
        "thereafter",
        "thereby",
        "therefore",
        "therein",
        "thereupon",
        "these",
        "they",
        "thick",
        "thin",
        "third",
        "this",
        "those",
        "though",
        "three",
        "through",
        "throughout",
        "thru",
        "thus",
        "to",
        "together",
        "too",
        "top",
        "toward",
        "towards",
        "twelve",
        "twenty",
        "two",
        "un",
        "under",
        "until",
        "up",
        "upon",
        "us",
        "very",
        "via",
        "was",
        "we",
        "well",
        "were",
        "what",
        "whatever",
        "when",
        "whence",
        "whenever",
        "where",
        "whereafter",
        "whereas",
        "whereby",
        "wherein",
        "whereupon",
        "wherever",
        "whether",
        "which",
        "while",
        "whither",
        "who",
        "whoever",
        "whole",
        "whom",
        "whose",
        "why",
        "will",
        "with",
        "within",
        "without",
        "would",
        "yet",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
    }
)
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

# scikit-learn's English list also holds words that name what customers ask for
# or about ("call", "back", "full", "first", "system", "name", "two"); measured
# on both labelled corpora, keeping them as words helps the categories.
CONTENT_WORDS = frozenset(
    {
        "amount",
        "back",
        "bill",
        "bottom",
        "call",
        "cry",
        "describe",
        "detail",
        "down",
        "eight",
        "eleven",
        "empty",
        "fifteen",
        "fifty",
        "fill",
        "find",
        "fire",
        "first",
        "five",
        "forty",
        "found",
        "four",
        "front",
        "full",
        "give",
        "hundred",
        "interest",
        "keep",
        "last",
        "move",
        "name",
        "next",
        "nine",
        "off",
        "out",
        "over",
        "part",
        "put",
        "see",
        "serious",
        "show",
        "side",
        "six",
        "sixty",
        "still",
        "system",
        "take",
        "ten",
        "third",
        "three",
        "top",
        "twelve",
        "twenty",
        "two",
        "up",
        "again",
    }
)
STOP_WORDS = (
    frozenset(w.replace("'", "") for w in SKLEARN_STOP_WORDS) - CONTENT_WORDS
) | EXTRA_STOP_WORDS

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


def trie_pattern(words: Iterable[str]) -> str:
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
def stop_word_pattern(words: frozenset[str] = STOP_WORDS) -> re.Pattern[str]:
    """One compiled regex matching any stop word as a whole token."""
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


def _tokenise_reference(
    text: pd.Series,
    keep_mentions: bool = True,
    remove_stop_words: bool = True,
    keep_special_tokens: bool = False,
) -> pd.Series:
    """The tokeniser's specification: slow, one pandas string step per rule.

    ``tokenise`` must return exactly this; tests and ``bench/text_bench.py``
    compare the two.
    """
    s = normalise(text, keep_mentions=keep_mentions)
    if remove_stop_words:
        s = s.str.replace(stop_word_pattern(), " ", regex=True)
    tokens = s.str.findall(TOKEN).str.join(" ")
    if not keep_special_tokens:
        tokens = tokens.str.replace(r"(?<!\S)xx[a-z]+(?!\S)", " ", regex=True)
        tokens = tokens.str.replace(r"\s+", " ", regex=True).str.strip()
    return tokens.astype("str")


# The fast path. Every RE2 pattern below does exactly what the Python rule of
# the same name does to the text that reaches it. RE2 has no look-arounds, so a
# look-behind becomes a captured character that the replacement puts back; that
# is exact because no match ends with a character the next match would need.
# Python's \s (str.isspace) as an RE2 class body; a test checks every code point.
PY_WHITESPACE_RE2 = (
    r"\t-\r\x1c-\x20\x85\xa0\x{1680}\x{2000}-\x{200a}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
)
_URL_RE2 = rf"(?:https?://|www\.)[^{PY_WHITESPACE_RE2}]+"
_EMOJI_RE2 = r"[\x{1f000}-\x{1faff}\x{2600}-\x{27bf}\x{2b00}-\x{2bff}\x{fe0f}\x{200d}]+"
# "(?:[^\x00-\x7f]|_)*" is "anything but ASCII other than _".
_MOJIBAKE_RUN_RE2 = r"_*[^\x00-\x7f][^\x00-\x5e\x60-\x7f]*"
# From here on the text is ASCII, where RE2's and Python's \w, \d, \b agree.
_MENTION_RE2 = r"(^|[^0-9A-Za-z_@])@([0-9A-Za-z_]{1,15})"
_HASHTAG_RE2 = r"(^|[^0-9A-Za-z_#])#([0-9A-Za-z_]+)"
_TRAILING_DIGITS_RE2 = r"([a-z])[0-9]+\b"
# Necessary conditions (a rule without its look-arounds) that pick the rows on
# which the rules RE2 cannot express run as Python regexes.
_EMOTICON_HINT_RE2 = (
    r"[:;=8][\-o\*']?[\)\]dDpP3\(\[/\\|]|<3|\^_?\^|:'\("  # SMILEY or SADEY
)
_ELONGATED_HINT_RE2 = "|".join(c * 3 for c in "abcdefghijklmnopqrstuvwxyz")
_DIGIT_HINT_RE2 = "[0-9]"
# NUMBER for ASCII text, written to start with a character class so that the
# regex engine skips to the next digit instead of trying a look-behind at every
# position.
_NUMBER_ASCII = re.compile(
    r"[0-9](?<![a-z0-9][0-9])[0-9]*(?:[.,:][0-9]+)*"
    r"(?:st|nd|rd|th|s|am|pm|k|m)?(?![a-z])"
)
# TOKEN only reads [a-z0-9_@]: everything else becomes a space, and TOKEN's
# matches are then the space-separated runs, trimmed by ``_tokens_of_runs``,
# once "ab@cd" (tokens "ab" and "@cd") is split before every "@" inside a run
# and every "@" that cannot start a token ("@", "@a", "@9") is dropped.
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_@\n")
_RUNS_TABLE = {i: " " for i in range(128) if chr(i) not in _TOKEN_CHARS}
_INNER_AT = re.compile(r"@(?<=[a-z0-9_@]@)")
_LONE_AT = re.compile(r"@(?![a-z][a-z0-9_])")
_ROW_BREAK = "|"  # between rows once the text is runs; "|" itself became a space


@lru_cache(maxsize=4)
def _stop_words(stop_words: frozenset[str] = STOP_WORDS) -> pa.Array:
    """The stop words of ``stop_word_pattern`` as an Arrow array for ``is_in``."""
    words = sorted(stop_words)
    # The pattern removes a whole [a-z0-9_] run not after "@"; a run equals a
    # word only if the word is all letters.
    if not all(re.fullmatch("[a-z]+", w) for w in words):
        raise ValueError("stop words must be lower-case letters only")
    return pa.array(words, pa.large_string())


def _sub_where(
    values: pa.Array, hint: str, rules: list[tuple[re.Pattern[str], str]]
) -> pa.Array:
    """Apply Python regex rules to the rows where the RE2 ``hint`` matches.

    The rows are joined by newlines (none is left in them) and each rule runs
    once over the joined string.
    """
    mask = pc.match_substring_regex(values, hint)
    if not pc.any(mask).as_py():
        return values
    text = "\n".join(values.filter(mask).to_pylist())
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return pc.replace_with_mask(values, mask, pa.array(text.split("\n"), values.type))


def _normalise_fast(values: pa.Array, keep_mentions: bool) -> pa.Array:
    """``normalise`` over Arrow strings without nulls, newlines made spaces."""
    v = pc.replace_substring(values, "\n", " ")
    v = pc.replace_substring_regex(v, _URL_RE2, f" {URL_TOKEN} ")
    v = _sub_where(
        v,
        _EMOTICON_HINT_RE2,
        [(SMILEY, f" {SMILE_TOKEN} "), (SADEY, f" {SAD_TOKEN} ")],
    )
    non_ascii = pc.invert(pc.string_is_ascii(v))
    if pc.any(non_ascii).as_py():
        u = v.filter(non_ascii)
        u = pc.replace_substring_regex(u, _EMOJI_RE2, f" {EMOJI_TOKEN} ")
        u = pc.replace_substring_regex(u, _MOJIBAKE_RUN_RE2, " ")
        v = pc.replace_with_mask(v, non_ascii, u)
    mention = r"\1 @\2 " if keep_mentions else rf"\1 {USER_TOKEN} "
    v = pc.replace_substring_regex(v, _MENTION_RE2, mention)
    v = pc.replace_substring_regex(v, _HASHTAG_RE2, r"\1 \2 ")
    v = pc.ascii_lower(v)
    # APOSTROPHE; its "\u2019" went with the other non-ASCII characters.
    v = pc.replace_substring(pc.replace_substring(v, "'", ""), "`", "")
    v = _sub_where(v, _ELONGATED_HINT_RE2, [(ELONGATED, r"\1\1")])
    v = pc.replace_substring_regex(v, _TRAILING_DIGITS_RE2, r"\1")
    return _sub_where(v, _DIGIT_HINT_RE2, [(_NUMBER_ASCII, f" {NUMBER_TOKEN} ")])


def _tokens_of_runs(
    runs: pa.Array, remove_stop_words: bool, keep_special_tokens: bool
) -> tuple[pa.Array, pa.Array]:
    """Which runs hold a token, and each run trimmed to its token.

    A stop word is a whole run, checked before leading digits and "_" are
    trimmed ("9the" keeps "the"); what is left must have two characters and,
    unless kept, not be a special token. Row breaks are one character: dropped.
    """
    token = pc.utf8_ltrim(runs, characters="0123456789_")
    length = pc.binary_length(token)
    keep = pc.greater_equal(length, 2)
    if remove_stop_words:
        keep = pc.and_not(keep, pc.is_in(runs, value_set=_stop_words()))
    if not keep_special_tokens:
        special = pc.and_(pc.starts_with(token, "xx"), pc.ascii_is_alpha(token))
        keep = pc.and_not(keep, pc.and_(special, pc.greater(length, 2)))
    return keep, token


def _tokenise_fast(
    values: pa.Array,
    keep_mentions: bool,
    remove_stop_words: bool,
    keep_special_tokens: bool,
) -> pa.Array:
    """``_tokenise_reference`` over Arrow strings without nulls."""
    lists = _token_lists(values, keep_mentions, remove_stop_words, keep_special_tokens)
    return pc.binary_join(lists, pa.scalar(" ", pa.large_string()))


def _token_lists(
    values: pa.Array,
    keep_mentions: bool,
    remove_stop_words: bool,
    keep_special_tokens: bool,
) -> pa.LargeListArray:
    """The tokens of each of ``values`` (Arrow strings without nulls), as lists."""
    normalised = _normalise_fast(values, keep_mentions)
    text = "\n".join(normalised.to_pylist()).translate(_RUNS_TABLE)
    text = _LONE_AT.sub("", _INNER_AT.sub(" @", text))
    text = text.replace("\n", f" {_ROW_BREAK} ")
    runs = pc.ascii_split_whitespace(pa.array([text], pa.large_string())).values
    keep, token = _tokens_of_runs(runs, remove_stop_words, keep_special_tokens)
    keep = keep.to_numpy(zero_copy_only=False)
    row = np.cumsum(pc.equal(runs, _ROW_BREAK).to_numpy(zero_copy_only=False))
    counts = np.bincount(row[keep], minlength=len(values))
    if len(counts) != len(values):
        raise AssertionError("tokenise: a row break inside a row")
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    return pa.LargeListArray.from_arrays(offsets, token.filter(keep))


def tokenise(
    text: pd.Series,
    keep_mentions: bool = True,
    remove_stop_words: bool = True,
    keep_special_tokens: bool = False,
) -> pd.Series:
    """Turn raw tweets into space-joined tokens (index and name kept).

    Special tokens (``xxurl``, ``xxnum``, ...) mark what was there; they are
    dropped unless ``keep_special_tokens`` because they say nothing about a
    tweet's subject. Missing texts stay missing.
    """
    s = text.astype("str")
    values = arrow_strings(s)
    tokens = _tokenise_fast(
        pc.fill_null(values, ""), keep_mentions, remove_stop_words, keep_special_tokens
    )
    if values.null_count:
        tokens = pc.if_else(pc.is_valid(values), tokens, pa.scalar(None, tokens.type))
    return pd.Series(tokens, index=s.index, name=s.name, dtype="str")


def token_lists(
    text: pd.Series,
    keep_mentions: bool = True,
    remove_stop_words: bool = True,
    keep_special_tokens: bool = False,
) -> pa.LargeListArray:
    """The tokens ``tokenise`` joins with spaces, as an Arrow list per text (a
    missing text has none): what embedding needs, without joining the tokens
    and splitting them again."""
    return _token_lists(
        pc.fill_null(arrow_strings(text), ""),
        keep_mentions,
        remove_stop_words,
        keep_special_tokens,
    )


def token_counts(tokens: pd.Series) -> pd.Series:
    """Number of tokens in each space-joined token string (0 when empty or
    missing), counted in Arrow."""
    values = arrow_strings(tokens)
    spaces = pc.add(pc.count_substring(values, " "), 1)
    counts = pc.if_else(pc.greater(pc.binary_length(values), 0), spaces, 0)
    return pd.Series(
        pc.fill_null(counts, 0).to_numpy(zero_copy_only=False).astype(np.int64),
        index=tokens.index,
        name=tokens.name,
    )
