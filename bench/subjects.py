"""Keyword-rule subject labeller for the tweetflow corpus (six collection subjects)."""

import re

import numpy as np
import pandas as pd

SUBJECTS = [
    "airline",
    "deflategate",
    "self_driving_car",
    "coachella",
    "apple",
    "claritin",
]

_AIR_HANDLES = (
    r"united|americanair|usairways|southwestair|jetblue|virginamerica|"
    r"delta|deltaassist|alaskaair|spiritairlines|aa"
)
# strong (collection-defining) patterns
STRONG = {
    "airline": rf"@(?:{_AIR_HANDLES})\b",
    "deflategate": r"#?defla(?:te|ted|tion)?gate|#?ballghazi|#def(?:l(?:a(?:t(?:e(?:g(?:a(?:t(?:e)?)?)?)?)?)?)?)?(?:äó_|…|$)",
    "self_driving_car": r"driver[- ]?less|self[- ]?driving|autonomous (?:car|vehicle)|automated (?:car|vehicle|driving)|#autoauto|google car|robot(?:ic)? car",
    "coachella": r"coachella|#coachel",
    "apple": r"@apple\b|#apple\b|\baapl\b|\biphone|\bipad|\bitunes|\bmacbook|\bimac\b|\bios ?\d|\bapple ?watch",
    "claritin": r"claritin|zyrtec|allegra|allerg",
}
# weaker context words, used only if no strong rule fires
WEAK = {
    "airline": r"\bflights?\b|\bairlines?\b|\bairport|\bbaggage|\bluggage|\bcheck-?in\b|\bgate\b|\bboarding|\bpilot|\bcrew\b|\bfly(?:ing)?\b|\bplane\b|\bseat",
    "deflategate": r"deflat|tombrady|goddell|press conference|patriots|#pats\b|\bbrady\b|belichick|footballs?\b|\bnfl\b|\bpsi\b|super ?bowl|seahawks|goodell|\bballs?\b",
    "self_driving_car": r"autonomous|automated|\bcars?\b|\bvehicles?\b|driving",
    "coachella": r"festival|lineup|\bacdc\b|\bdrake\b|indio",
    "apple": r"\bapple\b|\bmac\b|\bios\b|\bsiri\b|\btim cook|\bwatch\b",
    "claritin": r"antihistamine|hay ?fever|pollen|sneez|\bitchy|runny nose",
}
_S = {k: re.compile(v, re.I) for k, v in STRONG.items()}
_W = {k: re.compile(v, re.I) for k, v in WEAK.items()}
_HASHTAGS = re.compile(r"#\w+")


def _match(texts: pd.Series, pats: dict[str, str]) -> np.ndarray:
    return np.column_stack(
        [texts.str.contains(p, regex=True).to_numpy(bool) for p in pats.values()]
    )


def label_subjects(texts: pd.Series) -> pd.Series:
    """Assign each tweet one of SUBJECTS or None.

    Order of evidence: (1) the tweet's own hashtags matched by strong rules,
    (2) strong patterns over the full text (earliest match position wins when
    several fire), (3) weak context words, only if exactly one subject fires.
    """
    t = texts.fillna("").astype(str).str.lower()
    tags = t.str.findall(_HASHTAGS).str.join(" ")
    names = np.array(SUBJECTS, dtype=object)
    out = np.full(len(t), None, dtype=object)

    # (2) strong patterns on full text: earliest-position match wins
    pos = np.column_stack(
        [
            t.str.extract(f"(?i)^(.*?)(?:{STRONG[k]})", expand=False)
            .str.len()
            .fillna(1e9)
            .to_numpy(float)
            for k in SUBJECTS
        ]
    )
    has = pos < 1e9
    first = pos.argmin(1)
    out[has.any(1)] = names[first[has.any(1)]]

    # (1) hashtags override when exactly one subject fires on the hashtags
    H = _match(tags, {k: STRONG[k] for k in SUBJECTS}) | _match(
        tags,
        {
            k: r"#(?:" + v + r")"
            for k, v in {
                "airline": r"united|americanair|usairways|southwestair|jetblue|virginamerica",
                "deflategate": r"patriots|pats|nfl|superbowl\w*|sb49|brady|deflat\w*",
                "self_driving_car": r"driverless|selfdriving|autonomous\w*|googlecar",
                "coachella": r"coachella\w*",
                "apple": r"apple\w*|iphone\w*|ipad\w*|mac\w*|ios\w*|aapl",
                "claritin": r"claritin\w*|allerg\w*",
            }.items()
        },
    )
    one = H.sum(1) == 1
    out[one] = names[H[one].argmax(1)]

    # (3) weak words for the rest, only when unambiguous
    rest = pd.isna(out)
    W = _match(t[rest], WEAK)
    ok = W.sum(1) == 1
    idx = np.flatnonzero(rest)[ok]
    out[idx] = names[W[ok].argmax(1)]
    return pd.Series(out, index=texts.index, name="subject", dtype=object)
