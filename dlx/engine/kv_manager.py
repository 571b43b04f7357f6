"""Paged KV-cache bookkeeping: pages of `page_size` tokens shared by all layers, reference counts,
and a prefix cache of full pages keyed by a hash chain of their token ids."""
import hashlib
from collections import OrderedDict

import numpy as np


def chain_hash(previous: bytes | None, tokens: list[int]) -> bytes:
    """Identifies a page by its tokens and everything before it (KV depends on the whole prefix)."""
    h = hashlib.blake2b(previous or b"", digest_size=16)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


class KVCacheManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = True):
        self.num_pages, self.page_size = num_pages, page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_pages
        self.page_hash: list[bytes | None] = [None] * num_pages
        self.hash_to_page: dict[bytes, int] = {}
        self.free_pages: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_pages))  # oldest first
        self.num_cached = 0   # free pages still holding a reusable prefix (kept as a count: read every step)

    @property
    def num_free(self) -> int:
        """Pages that can be handed out now (unreferenced, cached or not)."""
        return len(self.free_pages)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self.free_pages)

    def match_prefix(self, tokens: list[int], limit: int) -> tuple[list[int], list[bytes]]:
        """Longest run of cached full pages covering tokens[:limit]; each hit gains a reference."""
        pages, hashes, previous = [], [], None
        if not self.enable_prefix_caching:
            return pages, hashes
        for start in range(0, limit - self.page_size + 1, self.page_size):
            digest = chain_hash(previous, tokens[start:start + self.page_size])
            page = self.hash_to_page.get(digest)
            if page is None:
                break
            self._take(page)
            pages.append(page)
            hashes.append(digest)
            previous = digest
        return pages, hashes

    def allocate(self, count: int) -> list[int] | None:
        """`count` fresh pages, evicting the least recently freed cached prefixes; None if too few."""
        if count > len(self.free_pages):
            return None
        pages = []
        for _ in range(count):
            page, _ = self.free_pages.popitem(last=False)
            if self.page_hash[page] is not None:
                del self.hash_to_page[self.page_hash[page]]
                self.page_hash[page] = None
                self.num_cached -= 1
            self.ref_count[page] = 1
            pages.append(page)
        return pages

    def register(self, page: int, digest: bytes) -> None:
        """A page's KV is complete: offer it to later requests with the same prefix."""
        if self.enable_prefix_caching and digest not in self.hash_to_page and self.page_hash[page] is None:
            self.hash_to_page[digest] = page
            self.page_hash[page] = digest

    def free(self, pages: list[int]) -> None:
        for page in pages:
            self.ref_count[page] -= 1
            assert self.ref_count[page] >= 0, "page freed twice"
            if self.ref_count[page] == 0:
                self.free_pages[page] = None   # most recently freed last: evicted last
                self.num_cached += self.page_hash[page] is not None

    def _take(self, page: int) -> None:
        if self.ref_count[page] == 0:
            del self.free_pages[page]
            self.num_cached -= 1   # only hashed pages are found by a prefix match
        self.ref_count[page] += 1
