"""The two-layer cache: L1 in process memory (LRU + TTL) over L2 in Redis, over the database.

The design (reads, invalidation, single-flight, lists, Redis outages) is in
:mod:`backend.cache.twolayer`'s docstring. The package, by responsibility:

* :mod:`backend.cache.codec`: :class:`Codec`, :class:`PydanticCodec` (values ↔ bytes);
* :mod:`backend.cache.l1`: the process's layer: LRU + TTL entries, epochs, single-flight;
* :mod:`backend.cache.l2`: the Redis side: Lua scripts, keys, the invalidation channel,
  the outage state and the reconnect;
* :mod:`backend.cache.twolayer`: :class:`TwoLayerCache`, which puts them together.

Import from here: ``from backend.cache import TwoLayerCache, PydanticCodec``.
"""

from backend.cache.codec import Codec, PydanticCodec
from backend.cache.twolayer import MAX_LIST_LEN, LayerCounts, TwoLayerCache

__all__ = ["MAX_LIST_LEN", "Codec", "LayerCounts", "PydanticCodec", "TwoLayerCache"]
