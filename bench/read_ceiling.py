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


def read_call(num_bytes: int, tile_bytes: int, device: str = "cuda"):
    """A function that reads num_bytes (rounded up to whole tiles) of a zeroed buffer once."""
    tile = tile_bytes // 4
    tiles = triton.cdiv(num_bytes, tile_bytes)
    words = torch.zeros(tiles * tile, dtype=torch.int32, device=device)
    sums = torch.empty(tiles, dtype=torch.int32, device=device)
    return lambda: _read_tiles_kernel[(tiles,)](words, sums, TILE=tile, num_warps=4)


def read_ceiling_ms(num_bytes: int, timer) -> float:
    """The fastest time, by `timer` (a function of a callable), of reading num_bytes over TILE_BYTES' tiles."""
    return min(timer(read_call(num_bytes, tile_bytes)) for tile_bytes in TILE_BYTES)
