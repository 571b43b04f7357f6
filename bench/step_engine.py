"""The LLaDA2-shaped dummy-weight engine the step benchmarks share (bench/forward.py, bench/step_profile.py):
building it, its prompts, capturing its graphs, and the kernels its steps run under torch.profiler."""
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlx.config import Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.models.shapes import write_shape_dir  # noqa: E402

BLOCK = 32


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def random_prompt(engine: LLMEngine, length: int, seed: int) -> list[int]:
    """Random token ids, none of them the mask or EOS token (a prompt holding a mask would be decoded into)."""
    ids = torch.randint(0, engine.vocab_size, (length,), generator=torch.Generator().manual_seed(seed))
    special = torch.tensor([t for t in (engine.mask_id, engine.eos_id) if t is not None])
    return torch.where(torch.isin(ids, special), (ids + 1) % engine.vocab_size, ids).tolist()


def shape_engine(shape: str, layers: int | None, batches: list[int], longest: int, eager: bool = True) -> LLMEngine:
    """The dummy-weight engine of a LLaDA2 shape, sized for `batches` requests of up to `longest` tokens."""
    model_dir = write_shape_dir(tempfile.mkdtemp(prefix="dlx-shape-"), shape, layers)
    cfg = Config(model=model_dir, load_format="dummy", device="cuda", dtype="bfloat16", max_model_len=longest,
                 max_num_reqs=max(batches), max_num_batched_tokens=max(longest, max(batches) * 2 * BLOCK),
                 num_kv_pages=max(batches) * (longest // BLOCK + 1) + 64, enforce_eager=eager).finalize()
    return LLMEngine(cfg)


def capture(engine: LLMEngine) -> tuple[int, float]:
    """(graphs, seconds): the engine's decode graphs captured (again, after adapters were attached)."""
    cfg = engine.cfg
    return engine.runner.use_graphs(cfg.max_num_reqs, cfg.buffer_size, cfg.max_model_len)


def step_kernels(engine: LLMEngine, steps: int = 1) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every kernel of `steps` engine steps, under torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        sync()
    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
