"""Fused-op benchmarks at LLaDA2.0-mini shapes: residual add + RMSNorm, qk norm + partial rotary, greedy argmax_prob;
PyTorch (today's ops) vs Triton, bandwidth against device copy. A section of bench/kernel_bench.py, or standalone."""
import functools
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dlx.kernels.norm import rms_norm_reference, rms_norm_triton  # noqa: E402
from dlx.kernels.rotary import qk_norm_rotary_reference, qk_norm_rotary_triton  # noqa: E402
from dlx.kernels.sampling import argmax_prob_triton  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, ROTARY_DIM = 2048, 16, 4, 128, 64   # LLaDA2.0-mini, one GPU
EPS, VOCAB = 1e-6, 157184
MAX_POSITIONS, THETA = 8192, 600000.0   # the table's contents do not change the timing
EXCLUDED_ID = VOCAB - 300       # stands in for the mask token: its logit is every row's largest
TOKENS = (32, 256, 2048)


def norm_case(tokens: int, gen: torch.Generator) -> tuple:
    """Residual add + RMSNorm of one decoder layer, bf16. Bytes: x and residual read, normed and sum written."""
    x, residual = torch.randn(2, tokens, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = 1 + 0.1 * torch.randn(HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    expected = rms_norm_reference(x, weight, EPS, residual)[0]
    error = (rms_norm_triton(x, weight, EPS, residual)[0].float() - expected.float()).abs().max().item()
    return (lambda: rms_norm_reference(x, weight, EPS, residual), lambda: rms_norm_triton(x, weight, EPS, residual),
            4 * x.numel() * x.element_size(), f"{error:.1e}")


def qk_case(tokens: int, gen: torch.Generator, inplace: bool = True) -> tuple:
    """Per-head qk norm + rotary on views of a fused QKV, bf16; Triton in place (as the model runs it) or not.
    Bytes: q and k read and written, plus each token's cos/sin rows."""
    qkv = torch.randn(tokens, HEADS + 2 * KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    q, k, _ = qkv.split([HEADS, KV_HEADS, KV_HEADS], dim=1)
    weights = [3 + 0.3 * torch.randn(HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2)]
    inv_freq = 1.0 / THETA ** (torch.arange(0, ROTARY_DIM, 2, device="cuda", dtype=torch.float32) / ROTARY_DIM)
    angles = torch.arange(MAX_POSITIONS, device="cuda", dtype=torch.float32)[:, None] * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    positions = torch.randint(0, MAX_POSITIONS, (tokens,), device="cuda", generator=gen)
    args = (q, k, *weights, cos, sin, positions, EPS)
    expected = qk_norm_rotary_reference(*args)
    got = qk_norm_rotary_triton(*args, inplace=False)
    error = max((g.float() - e.float()).abs().max().item() for g, e in zip(got, expected))
    moved = 2 * (q.numel() + k.numel()) * q.element_size() + 2 * tokens * ROTARY_DIM * 4
    # Repeated in-place runs keep the values bounded: a norm, then a rotation.
    return (lambda: qk_norm_rotary_reference(*args), lambda: qk_norm_rotary_triton(*args, inplace=inplace),
            moved, f"{error:.1e}")


def argmax_case(tokens: int, gen: torch.Generator) -> tuple:
    """Greedy token + probability over the vocabulary from fp32 logits. PyTorch is the sampler's path today:
    the mask column set to -inf in place, softmax, argmax, gather. Bytes: the logits read once."""
    logits = 4 * torch.randn(tokens, VOCAB, device="cuda", dtype=torch.float32, generator=gen)
    logits[:, EXCLUDED_ID] = 100.0
    pristine = logits.clone()

    def torch_path():
        logits[:, EXCLUDED_ID] = float("-inf")
        probs = logits.softmax(-1)
        ids = probs.argmax(-1)
        return ids, probs.gather(-1, ids[:, None]).squeeze(-1)
    got_ids, got_probs = argmax_prob_triton(pristine, EXCLUDED_ID)
    ids, probs = torch_path()
    error = f"{(got_ids != ids).sum().item()} ids, {(got_probs - probs).abs().max().item():.1e}"
    return torch_path, lambda: argmax_prob_triton(pristine, EXCLUDED_ID), logits.numel() * 4, error


CASES = {"add+rmsnorm": norm_case, "qk norm+rotary": qk_case,
         "qk, out-of-place": functools.partial(qk_case, inplace=False), "argmax_prob": argmax_case}


def fused_ops_section(copy_bytes_per_s: float, time_ms) -> None:
    """One table: each op at each token count, PyTorch vs Triton (time_ms(fn, iters, graph): median ms under
    CUDA graphs, L2 flushed, from bench/kernel_bench.py); bandwidth = the op's essential bytes / time."""
    print(f"\n## fused ops on {torch.cuda.get_device_name()} (LLaDA2.0-mini: hidden {HIDDEN}, {HEADS} q / "
          f"{KV_HEADS} kv heads, head dim {HEAD_DIM}, rotary {ROTARY_DIM}, vocab {VOCAB}; bf16, argmax on fp32 logits)")
    print("bandwidth = essential bytes (inputs read once, outputs written once) / time; % is of the copy bandwidth")
    header = ("op", "tokens", "MB", "torch ms", "torch GB/s", "triton ms", "triton GB/s", "% copy", "speedup",
              "max |err|")
    print(" | ".join(f"{h:>16}" for h in header))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, make in CASES.items():
        for tokens in TOKENS:
            torch_fn, triton_fn, moved, error = make(tokens, gen)
            torch_ms, triton_ms = time_ms(torch_fn), time_ms(triton_fn)
            torch_rate, triton_rate = moved / (torch_ms * 1e-3), moved / (triton_ms * 1e-3)
            row = (name, tokens, f"{moved / 1e6:.2f}", f"{torch_ms:.4f}", f"{torch_rate / 1e9:.0f}",
                   f"{triton_ms:.4f}", f"{triton_rate / 1e9:.0f}", f"{100 * triton_rate / copy_bytes_per_s:.0f}%",
                   f"{torch_ms / triton_ms:.2f}x", error)
            print(" | ".join(f"{str(c):>16}" for c in row), flush=True)
            torch.cuda.empty_cache()


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/fused_ops.py needs a CUDA GPU")
    # bench/ is not a package: load the shared timing helpers from bench/kernel_bench.py by path.
    spec = importlib.util.spec_from_file_location("dlx_bench_kernels", Path(__file__).with_name("kernel_bench.py"))
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    import triton
    print(f"# dlx fused-op benchmark on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    copy_bytes_per_s = kernels.copy_bandwidth()
    torch.cuda.empty_cache()
    print(f"device copy bandwidth (4 GiB, read + write, median of 10): {copy_bytes_per_s / 1e12:.2f} TB/s")
    fused_ops_section(copy_bytes_per_s, kernels.time_ms)


if __name__ == "__main__":
    main()
