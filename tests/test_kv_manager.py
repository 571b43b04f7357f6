"""KV-cache manager bookkeeping: reference counts, prefix hits through the hash chain, LRU eviction of
cached prefixes, and the used/free/cached counts the metrics report."""
from dlx.engine.kv_manager import KVCacheManager, chain_hash


def register_chain(kv, pages, tokens, size):
    previous = None
    for i, page in enumerate(pages):
        previous = chain_hash(previous, tokens[i * size:(i + 1) * size])
        kv.register(page, previous)


def test_counts_hits_and_eviction():
    kv = KVCacheManager(num_pages=4, page_size=2)
    tokens = [1, 2, 3, 4, 5]
    pages = kv.allocate(2)
    register_chain(kv, pages, tokens, 2)
    assert (kv.num_used, kv.num_free, kv.num_cached) == (2, 2, 0)
    kv.free(pages)
    assert (kv.num_used, kv.num_free, kv.num_cached) == (0, 4, 2)
    hit, _ = kv.match_prefix(tokens, limit=4)
    assert hit == pages and (kv.num_used, kv.num_cached) == (2, 0)
    kv.free(hit)
    other, _ = kv.match_prefix([1, 2, 9, 9], limit=4)     # first page shared, second differs
    assert other == pages[:1] and kv.num_cached == 1
    fresh = kv.allocate(3)                                   # takes the two never-used pages, then evicts
    assert fresh is not None and kv.num_cached == 0 and kv.num_free == 0
    assert kv.allocate(1) is None
    kv.free(fresh + other)
    assert kv.match_prefix(tokens, limit=4)[0] == pages[:1]  # evicted second page is no longer found


def test_disabled_prefix_caching_never_hits():
    kv = KVCacheManager(num_pages=2, page_size=2, enable_prefix_caching=False)
    pages = kv.allocate(1)
    register_chain(kv, pages, [1, 2], 2)
    kv.free(pages)
    assert kv.match_prefix([1, 2], limit=2) == ([], []) and kv.num_cached == 0
