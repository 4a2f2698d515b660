"""Unit tests of the category recipe's parts: stemmed terms, specificity weights,
the merge tree and its criterion, names from distinctive words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tasks.ml.embedding import DocumentEmbedder, doc_term_matrix, stem_words, term_lists
from tasks.stages.categories import CategoryMap, curated_match, term_concentration
from tasks.stages.clustering import (
    ClusteringConfig,
    discover,
    groups_at,
    merge_cost_ratios,
    name_terms,
    ward_merges,
)
from tasks.stages.features import FeaturesConfig, epochs_for, fit_embedder, specificity


def test_word_forms_share_one_stem_and_handles_are_left_alone() -> None:
    stems = stem_words(np.array(["cancelled", "canceled", "cancel", "@united"]))
    assert list(stems) == ["cancel", "cancel", "cancel", "@united"]
    tokens = pd.Series(["cancelled flight", "canceled flights", ""])
    assert term_lists(tokens, stem=True) == [
        ["cancel", "flight"],
        ["cancel", "flight"],
        [],
    ]
    vocab = pd.Index(["cancel", "flight"])
    counts = doc_term_matrix(tokens, vocab, stem=True).toarray()
    assert counts.tolist() == [[1, 1], [1, 1], [0, 0]]
    # Without stemming only exact words are known.
    assert doc_term_matrix(tokens, vocab).toarray().tolist() == [[0, 1], [0, 0], [0, 0]]


def test_remembered_stems_equal_fresh_ones_across_calls_and_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    import Stemmer

    words = [
        f"{w}{s}"
        for w in ("delay", "cancel", "refund", "board")
        for s in ("", "ed", "ing", "s")
    ]
    fresh = Stemmer.Stemmer("english").stemWords(words)
    chunks = [
        np.array(words[i:] + ["@united", ""], dtype=object) for i in range(0, 16, 3)
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(stem_words, chunks * 4))
    for chunk, stems in zip(chunks * 4, results, strict=True):
        expected = [dict(zip(words, fresh)).get(w, w) for w in chunk]
        assert list(stems) == expected  # handles and the empty word stay as they are


def test_a_full_stem_cache_starts_again_and_stays_right(monkeypatch) -> None:
    import Stemmer

    from tasks.ml import embedding

    cache = embedding._StemCache()
    monkeypatch.setattr(embedding._StemCache, "LIMIT", 6)
    stemmer = Stemmer.Stemmer("english")
    for words in (
        ["flights", "delayed", "flights"],
        ["boarding", "refunds"],
        ["delayed", "cancelled", "bags", "seats"],
        ["flights"],
    ):
        got = cache.stems_of(np.array(words, dtype=object))
        assert list(got) == stemmer.stemWords(words)
        assert len(cache.words) <= 6 and cache.words.is_unique


def test_an_old_bundle_without_the_stem_flag_loads_unstemmed(
    tmp_path,
) -> None:
    embedder = DocumentEmbedder(
        vocab=pd.Index(["cancelled", "flight"]),
        vectors=np.eye(2, 4, dtype=np.float32),
        weights=np.ones(2, dtype=np.float32),
        components=np.zeros((0, 4), dtype=np.float32),
        stem=True,
    )
    embedder.save(tmp_path, {})
    assert DocumentEmbedder.load(tmp_path).stem is True
    info = tmp_path / "embedding.json"
    info.write_text(info.read_text().replace('"stem": true', '"other": 1'))
    old = DocumentEmbedder.load(tmp_path)
    assert old.stem is False and list(old.vocab) == ["cancelled", "flight"]


def test_saved_word_vectors_load_as_gensim_reads_them_without_importing_it(
    tmp_path,
) -> None:
    import subprocess
    import sys

    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    words = ["flight", "@delta", "café", "x9_", "refund"]
    embedder = DocumentEmbedder(
        vocab=pd.Index(words),
        vectors=rng.normal(size=(5, 7)).astype(np.float32),
        weights=np.ones(5, dtype=np.float32),
        components=np.zeros((0, 7), dtype=np.float32),
    )
    embedder.save(tmp_path, {})
    kv = KeyedVectors.load_word2vec_format(
        str(tmp_path / "word_vectors.bin"), binary=True
    )
    loaded = DocumentEmbedder.load(tmp_path)
    assert list(loaded.vocab) == kv.index_to_key == words
    assert np.array_equal(loaded.vectors, kv.vectors)
    assert np.array_equal(loaded.vectors, embedder.vectors)
    code = (
        "import sys; from pathlib import Path; "
        "from tasks.ml.embedding import DocumentEmbedder; "
        f"DocumentEmbedder.load(Path({str(tmp_path)!r})); "
        "assert 'gensim' not in sys.modules, 'gensim was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    vectors = tmp_path / "word_vectors.bin"
    vectors.write_bytes(vectors.read_bytes()[:-3])
    with pytest.raises(ValueError, match="ends after 4 of 5 words"):
        DocumentEmbedder.load(tmp_path)


def test_specificity_scores_terms_by_how_unevenly_they_spread() -> None:
    groups = np.repeat([0, 1, 2, 3], 25)
    columns = {
        "bag": groups == 0,  # only ever in group 0
        "flight": np.ones(100, dtype=bool),  # everywhere
        "rare": np.arange(100) == 0,  # once, in group 0
    }
    counts = sp.csr_matrix(np.column_stack(list(columns.values())).astype(float))
    score = specificity(counts, groups, 4, prior=10.0)
    bag, flight, rare = score
    assert flight == pytest.approx(0.0, abs=1e-9)
    assert bag > 10 * rare > 0  # one use is not evidence: shrunk to the sizes
    # 25 uses in group 0 plus 10 pseudo-counts spread by the group sizes.
    p = np.array([27.5, 2.5, 2.5, 2.5]) / 35
    assert bag == pytest.approx(float((p * np.log(p / 0.25)).sum()))


def test_an_addressee_weighs_nothing_and_a_subject_handle_counts() -> None:
    rng = np.random.default_rng(0)
    topics = {
        "bag": "bag lost luggage claim",
        "late": "delay late hours gate",
        "app": "app crash login password",
    }
    tweets = []
    for i in range(600):
        topic = list(topics)[i % 3]
        words = list(rng.choice(topics[topic].split(), size=3))
        brand = ["@united", "@delta", "@jetblue"][rng.integers(3)]  # any brand
        subject = ["@appsupport"] if topic == "app" else []  # names the app topic
        tweets.append(" ".join([brand, *words, *subject]))
    tokens = pd.Series(tweets)
    config = FeaturesConfig(min_count=2, pilot_clusters=3, vector_size=16)
    embedder = fit_embedder(tokens, config, seed=1)
    weight = pd.Series(embedder.weights, index=embedder.vocab)
    assert weight[["@united", "@delta", "@jetblue"]].max() < 0.5
    assert weight["@appsupport"] > 1.0
    assert weight[["bag", "delay", "login"]].min() > 2.0  # 1 + strength * s
    known = fit_embedder(tokens, config, seed=1, addressees=["@united"])
    assert pd.Series(known.weights, index=known.vocab)["@united"] == 0.0
    vectors, n_known = known.embed(pd.Series(["@united", "@united bag"]))
    assert n_known.tolist() == [0, 1]  # an addressee alone is no known word
    assert not vectors[0].any()


def test_small_corpora_get_more_passes() -> None:
    config = FeaturesConfig()
    assert epochs_for(config, 100_000) == 40
    assert epochs_for(config, 250_000) == 16
    assert epochs_for(config, 5_000_000) == config.min_epochs
    assert epochs_for(FeaturesConfig(epochs=7), 100) == 7


def test_ward_merges_the_closest_groups_first_and_the_ratio_finds_the_gap() -> None:
    # Two well separated pairs of groups: merging down to 2 is cheap, to 1 dear.
    centroids = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.3, 0.0]])
    merges = ward_merges(centroids, np.ones(4))
    assert [sorted(m[:2]) for m in merges[:2]] == [[0, 1], [2, 3]]
    merged = groups_at(merges, 4, 2)
    assert merged[0] == merged[1] != merged[2] == merged[3]
    ratios = merge_cost_ratios(merges, 4, 2, 3)
    assert max(ratios, key=ratios.get) == 2
    assert ratios[2] > 1000


def blobs(k: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 8)) * 5
    points = centres[np.arange(n) % k] + rng.normal(size=(n, 8))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_discover_finds_the_number_of_blobs_and_is_stable() -> None:
    config = ClusteringConfig(k_min=2, k_max=12, selection_sample=900, overclusters=30)
    found = discover(blobs(6, 1200, 0), None, config, seed=3)
    assert found.model.n_clusters == 6
    assert found.stability > 0.95
    assert max(found.ratios, key=found.ratios.get) == 6


def test_the_previous_k_is_kept_only_when_as_good_as_the_best() -> None:
    vectors = blobs(6, 1200, 0)
    config = ClusteringConfig(k_min=2, k_max=12, selection_sample=900, overclusters=30)
    best = discover(vectors, None, config, seed=3)
    near = max(
        (k for k in best.ratios if k != 6), key=lambda k: best.ratios[k]
    )  # the runner-up
    tolerant = config.model_copy(update={"keep_k_tolerance": 0.99})
    assert discover(vectors, None, tolerant, 3, keep_k=near).model.n_clusters == near
    strict = config.model_copy(update={"keep_k_tolerance": 0.0})
    assert discover(vectors, None, strict, 3, keep_k=near).model.n_clusters == 6


def test_names_are_distinctive_words_not_ones_every_cluster_uses() -> None:
    tokens = pd.Series(
        ["flight bags lost @united"] * 10
        + ["flight bag claim"] * 10
        + ["flight delayed hours"] * 10
        + ["flight delay gate @united"] * 10
    )
    labels = np.repeat([0, 0, 1, 1], 10)
    names = name_terms(tokens, labels, 2, min_count=5)
    assert names[0][0] == "bag" or names[0][0] == "bags"
    assert "flight" not in names[0] + names[1]
    assert not any(n.startswith("@") for n in names[0] + names[1])
    assert len({n for n in names[1] if n.startswith("delay")}) == 1  # one stem, once


def test_a_curated_name_goes_only_to_a_cluster_it_fits() -> None:
    cmap = CategoryMap.model_validate(
        {"categories": [{"name": "Baggage", "terms": ["bag", "luggage", "claim"]}]}
    )
    clusters = [
        {
            "cluster_id": 0,
            "top_terms": ["bag", "claim", "lost"],
            "term_scores": [3, 2, 1],
        },
        {
            "cluster_id": 1,
            "top_terms": ["bag", "luggage", "fee"],
            "term_scores": [3, 2, 1],
        },
    ]
    concentrated = pd.Series(["bag claim"] * 9 + ["bag fee"] * 1)
    labels = np.array([0] * 9 + [1])
    shares = term_concentration(concentrated, labels, 2, cmap)
    assert curated_match(clusters, cmap, shares) == {0: "Baggage"}
    # The same words spread evenly over both clusters: the name fits neither.
    spread = pd.Series(["bag claim"] * 5 + ["bag luggage"] * 5)
    shares = term_concentration(spread, np.array([0, 1] * 5), 2, cmap)
    assert shares.max() == 0.5
    strict = cmap.model_copy(update={"min_concentration": 0.6})
    assert curated_match(clusters, strict, shares) == {}
