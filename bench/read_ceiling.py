"""The read ceiling of a call's size: a Triton kernel that only reads a buffer of the same bytes, one
program a tile, each storing one word. No kernel moving that many bytes can finish sooner."""
import torch
import triton
import triton.language as tl

TILE_BYTES = (8192, 16384, 32768)   # the best of these is the ceiling (small tiles win on small buffers)


@triton.jit
def _read_tiles_kernel(words_ptr, sums_ptr, TILE: tl.constexpr):
    tile = tl.program_id(0)
    offsets = tile.to(tl.int64) * TILE + tl.arange(0, TILE)
    tl.store(sums_ptr + tile, tl.sum(tl.load(words_ptr + offsets), 0))


def _read_call(words: torch.Tensor, num_bytes: int, tile_bytes: int):
    """A function that reads num_bytes of `words`, rounded up to whole tiles of tile_bytes, once."""
    tiles = triton.cdiv(num_bytes, tile_bytes)
    sums = torch.empty(tiles, dtype=torch.int32, device=words.device)
    return lambda: _read_tiles_kernel[(tiles,)](words, sums, TILE=tile_bytes // 4, num_warps=4)


def read_ceiling_ms(num_bytes: int, *timers) -> list[float]:
    """The fastest time, by each of `timers` (functions of a callable: bench/kernel_bench.py's time_ms, kernel_ms),
    of reading num_bytes over TILE_BYTES' tile sizes. One zeroed buffer, whole tiles of the largest, serves all."""
    largest = max(TILE_BYTES)
    words = torch.zeros(triton.cdiv(num_bytes, largest) * largest // 4, dtype=torch.int32, device="cuda")
    best = [float("inf")] * len(timers)
    for tile_bytes in TILE_BYTES:
        run = _read_call(words, num_bytes, tile_bytes)
        best = [min(fastest, timer(run)) for fastest, timer in zip(best, timers)]
    return best
