"""Cache storage: byte backends (`memory`, `disk`, `redis`), the value `Codec`, and `TieredCache`.

The cache levels (query, semantic, embedding, retrieval, LLM response, document) are each a
`TieredCache` with its own key prefix over shared backends.
"""

from ..errors import CorruptEntry
from .base import BackendStats, CacheBackend
from .codec import Codec
from .disk import DiskBackend
from .memory import MemoryBackend
from .redis import RedisBackend
from .tiered import CacheStats, TieredCache

__all__ = [
    "BackendStats",
    "CacheBackend",
    "CacheStats",
    "Codec",
    "CorruptEntry",
    "DiskBackend",
    "MemoryBackend",
    "RedisBackend",
    "TieredCache",
]
