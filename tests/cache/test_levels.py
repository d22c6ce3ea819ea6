"""The cache levels' own logic: embedding cache, semantic index partitions, keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metis_rag.cache.levels import SemanticIndex, digest, entities, normalize_question
from metis_rag.cache.memory import MemoryBackend
from metis_rag.cache.tiered import TieredCache
from metis_rag.embed.cached import CachedEmbedder


class CountingEmbedder:
    """A real (if simple) Embedder: hashed character trigrams, counting what it embeds."""

    model_id = "test:trigram"
    dim = 64

    def __init__(self) -> None:
        self.embedded: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for j in range(len(t) - 2):
                out[i, hash(t[j : j + 3]) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


async def test_unchanged_texts_are_never_embedded_twice() -> None:
    inner = CountingEmbedder()
    backend = MemoryBackend()
    embedder = CachedEmbedder(inner, TieredCache([backend], prefix="embedding:"))
    first = await embedder.embed(["alpha one", "beta two", "alpha one"])
    assert inner.embedded == ["alpha one", "beta two"]
    again = await embedder.embed(["beta two", "gamma three", "alpha one"])
    assert inner.embedded == ["alpha one", "beta two", "gamma three"]
    np.testing.assert_allclose(again[2], first[0])
    np.testing.assert_allclose(again[0], first[1])
    assert (await embedder.embed([])).shape == (0, 64)


def test_semantic_index_never_crosses_partitions() -> None:
    index = SemanticIndex(dim=3, max_entries=100)
    v = np.array([1.0, 0.0, 0.0], np.float32)
    near = np.array([0.99, 0.14, 0.0], np.float32)
    near /= np.linalg.norm(near)
    index.add(("ns-a", "1", "7", "shape"), v, "key-a", "question a")
    assert index.lookup(("ns-a", "1", "7", "shape"), near, 0.95).key == "key-a"
    for other in [("ns-b", "1", "7", "shape"), ("ns-a", "2", "7", "shape"),
                  ("ns-a", "1", "8", "shape"), ("ns-a", "1", "7", "other")]:
        assert index.lookup(other, near, 0.95) is None
    assert index.lookup(("ns-a", "1", "7", "shape"), np.array([0, 1, 0], np.float32), 0.95) is None
    index.clear("ns-a")
    assert index.entries == 0


def test_semantic_index_is_bounded_and_grows() -> None:
    index = SemanticIndex(dim=2, max_entries=50)
    for p in range(10):
        for i in range(10):
            angle = i / 10
            index.add(("ns", str(p), "1", "s"), np.array([np.cos(angle), np.sin(angle)],
                                                          np.float32), f"{p}-{i}", "q")
    assert index.entries <= 50
    hit = index.lookup(("ns", "9", "1", "s"), np.array([1.0, 0.0], np.float32), 0.99)
    assert hit is not None and hit.key == "9-0"


def test_keys_normalize_questions_and_separate_parts() -> None:
    assert normalize_question("  How do I   Rotate keys?? ") == "how do i rotate keys"
    assert digest("a", "bc") != digest("ab", "c")


def test_a_large_partition_switches_to_an_ann_index_and_still_finds_its_questions() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(600, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = SemanticIndex(dim=32, max_entries=10_000, exact_max=100)
    part = ("ns", "1", "1", "s")
    for i, v in enumerate(vectors):
        index.add(part, v, f"k{i}", f"q{i}")
    found = [index.lookup(part, v, 0.99) for v in vectors[::7]]
    assert all(h is not None and h.key == f"k{i * 7}" for i, h in enumerate(found))
    noisy = vectors[5] + 0.05 * rng.normal(size=32).astype(np.float32)
    hit = index.lookup(part, noisy / np.linalg.norm(noisy), 0.5)
    assert hit is not None and hit.key == "k5"


def test_entities_are_the_identifiers_and_figures_a_question_names() -> None:
    assert entities("What does queue.Queue.get do?") == {"queue.queue.get"}
    assert entities("What does Queue.get_nowait do?") == {"queue.get_nowait"}
    assert entities("What does SEV1 mean, and `os.path`?") == {"sev1", "os.path"}
    assert entities("How much paid holiday do I get each year?") == frozenset()
