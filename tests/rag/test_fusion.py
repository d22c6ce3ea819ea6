"""Fusion of the dense and full-text legs, and grouping of results by document."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metis_rag.rag import fusion
from metis_rag.rag.retriever import Retrieved, group_by_document
from metis_rag.store.repo import ChunkRow


def test_convex_mixes_both_legs_and_a_chunk_only_dense_found_scores_zero_in_full_text() -> None:
    dense = {1: 0.9, 2: 0.5, 3: 0.7}  # 3 came from the full-text leg, with its exact cosine
    lexical = {3: 12.0, 2: 4.0}
    mixed = fusion.convex(dense, lexical, dense_weight=0.5)
    # min-max: cosine 1 -> 1.0, 2 -> 0.0, 3 -> 0.5; full text 3 -> 1.0, 2 -> 0.0, 1 absent -> 0
    assert mixed == pytest.approx({1: 0.5, 2: 0.0, 3: 0.75})
    assert fusion.convex(dense, lexical, dense_weight=1.0) == pytest.approx(
        {1: 1.0, 2: 0.0, 3: 0.5})
    assert max(fusion.convex(dense, {}, 0.7).values()) == pytest.approx(0.7)


def test_a_leg_of_equal_scores_counts_fully_for_all_and_nothing_is_empty() -> None:
    assert fusion.convex({1: 0.4, 2: 0.4}, {1: 3.0}, 0.5) == pytest.approx({1: 1.0, 2: 0.5})
    assert fusion.convex({}, {}, 0.5) == {}


@pytest.mark.parametrize("how", ["minmax", "zscore", "dbsf"])
def test_normalisations_keep_the_order_within_zero_and_one(how: fusion.Normalisation) -> None:
    raw = np.array([3.0, -1.0, 10.0, 0.5])
    scaled = fusion.normalise(raw, how)
    assert list(np.argsort(scaled)) == list(np.argsort(raw))
    assert scaled.min() >= 0 and scaled.max() <= 1


def test_weighted_rrf_favours_the_heavier_list() -> None:
    fused = fusion.rrf([[1, 2], [2, 1]], k=60, weights=[0.7, 0.3])
    assert fused[1] > fused[2]
    assert fusion.rrf([[1, 2], [2, 1]], k=60)[1] == pytest.approx(fusion.rrf([[1, 2], [2, 1]],
                                                                              k=60)[2])


def _hit(chunk_id: int, document_id: int, score: float) -> Retrieved:
    row = ChunkRow(chunk_id, document_id, f"doc{document_id}.txt", "", chunk_id, "text", None,
                   None, b"")
    return Retrieved(row, score, score)


def test_grouping_keeps_top_k_distinct_documents_with_their_best_chunks_together() -> None:
    ranked = [_hit(1, 10, 0.9), _hit(2, 20, 0.8), _hit(3, 10, 0.7), _hit(4, 10, 0.6),
              _hit(5, 10, 0.5), _hit(6, 30, 0.4), _hit(7, 20, 0.3), _hit(8, 40, 0.2)]
    grouped = group_by_document(ranked, top_k=3, per_document=2)
    assert [(r.chunk.document_id, r.chunk.id) for r in grouped] == [
        (10, 1), (10, 3), (20, 2), (20, 7), (30, 6)]


def test_term_evidence_lifts_the_chunk_and_the_file_that_hold_the_query_words() -> None:
    rows = {1: ChunkRow(1, 1, "notes.txt", "", 0, "The cat sat on the mat.", None, None, b""),
            2: ChunkRow(2, 2, "rsync.1", "", 0, "Copies files between hosts.", None, None,
                        b""),
            3: ChunkRow(3, 3, "misc.txt", "", 0, "Nothing relevant here.", None, None, b"")}
    cosine = {1: 0.50, 2: 0.50, 3: 0.55}
    scored = fusion.terms("rsync copying files", cosine, rows, 0.1, 0.05)
    # "copying" does not match "copies" on its first six letters ("copyin"): the chunk holds 1
    # of 3 words ("files"), its file name 1 of 3 ("rsync"). Scores stay at most 1.
    assert scored[2] == pytest.approx((0.50 + 0.1 / 3 + 0.05 / 3) / 1.15)
    assert scored[1] == pytest.approx(0.50 / 1.15) and scored[3] == pytest.approx(0.55 / 1.15)
    assert fusion.terms("the of", cosine, rows, 0.1, 0.05) == cosine  # no content words
    # Holding every query word outranks a slightly better cosine.
    both = fusion.terms("cat mat", cosine, rows, 0.1, 0.0)
    assert max(both, key=both.__getitem__) == 1


def test_lexical_confidence_is_how_far_the_best_hit_stands_out() -> None:
    assert fusion.lexical_confidence({}) == 0.0
    assert fusion.lexical_confidence({1: 4.0}) == 1.0
    assert fusion.lexical_confidence({1: 4.0, 2: 1.0, 3: 3.0}) == pytest.approx(0.25)


def test_a_pasted_line_is_found_by_its_word_pairs_over_a_closer_cosine() -> None:
    line = "the handler flushes its buffer when the capacity is reached"
    rows = {1: ChunkRow(1, 1, "a.txt", "", 0, f"Notes. {line.capitalize()}.", None, None, b""),
            2: ChunkRow(2, 2, "b.txt", "", 0, "A handler and its buffer: when reached, capacity "
                        "flushes.", None, None, b"")}
    cosine = {1: 0.60, 2: 0.70}  # the same words shuffled look closer to the model
    plain = fusion.terms(line, cosine, rows, 0.1, 0.0)
    assert plain[2] > plain[1]
    with_pairs = fusion.terms(line, cosine, rows, 0.1, 0.0, phrase_weight=0.3)
    assert with_pairs[1] == pytest.approx((0.60 + 0.1 + 0.3) / 1.4)
    assert with_pairs[1] > with_pairs[2]


def test_a_table_row_keyed_by_a_rare_query_word_outranks_closer_cosines() -> None:
    table = "gnutella-rtr\t6347/tcp\nredis\t\t6379/tcp\nsge-qmaster\t6444/tcp"
    rows = {1: ChunkRow(1, 1, "services", "", 0, table, None, None, b""),
            2: ChunkRow(2, 1, "services", "", 1, "# Every port listed here is a TCP port.",
                        None, None, b""),
            3: ChunkRow(3, 1, "services", "", 2, "A note on the port range of redis clients.",
                        None, None, b""),
            4: ChunkRow(4, 1, "services", "", 3, "imaps\t993/tcp", None, None, b"")}
    cosine = {1: 0.38, 2: 0.51, 3: 0.45, 4: 0.30}  # the row is drowned among its neighbours
    old = fusion.terms("redis port", cosine, rows, 0.1, 0.05)  # no exactness weight: as before
    assert max(old, key=old.__getitem__) == 2
    scored = fusion.terms("redis port", cosine, rows, 0.1, 0.05, phrase_weight=0.3)
    assert max(scored, key=scored.__getitem__) == 1
    # Chunk 3 holds "redis" too, but not as a row's key: 2 of 4 candidates hold the word.
    rarity = 1 - math.log(2) / math.log(4)
    assert scored[1] == pytest.approx((0.38 + 0.1 * 1 / 2 + 0.3 * rarity) / 1.45)
    assert scored[3] == pytest.approx((0.45 + 0.1) / 1.45)
    # A word in every candidate is no evidence; "imaps" keys a row only in chunk 4.
    alone = fusion.terms("imaps", cosine, rows, 0.1, 0.05, phrase_weight=0.3)
    assert max(alone, key=alone.__getitem__) == 4
    # Prose that starts a line with the word is not a row.
    prose = {1: ChunkRow(1, 1, "a.txt", "", 0, "redis is a key-value store.", None, None, b"")}
    assert fusion.terms("redis", {1: 0.5}, prose, 0.1, 0.0, 0.3)[1] == pytest.approx(
        (0.5 + 0.1) / 1.4)
