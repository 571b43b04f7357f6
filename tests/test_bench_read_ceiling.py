"""bench/read_ceiling.py's kernel reads every word of the buffer it is timed on, so the attention table's read
ceiling counts all of a call's bytes: its per-tile sums match PyTorch's (CPU interpreter or GPU)."""
import sys
from pathlib import Path

import torch

from triton_support import DEVICE, import_triton

import_triton()
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import read_ceiling  # noqa: E402  (after the interpreter set-up, from bench/)


def test_every_word_of_every_tile_is_read():
    tiles, tile = 5, 8192 // 4
    words = torch.randint(-1000, 1000, (tiles * tile,), dtype=torch.int32, device=DEVICE)
    sums = torch.zeros(tiles, dtype=torch.int32, device=DEVICE)
    read_ceiling._read_tiles_kernel[(tiles,)](words, sums, TILE=tile)
    assert torch.equal(sums.cpu(), words.view(tiles, tile).sum(1, dtype=torch.int32).cpu())

