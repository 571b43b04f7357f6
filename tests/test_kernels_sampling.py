"""One-pass greedy argmax + probability (Triton) against argmax_prob_reference (softmax, argmax, gather): ragged
vocabularies, vocabulary splits, ties, the excluded mask id; the sampler and engine with the kernel selected."""
import pytest
import torch

from test_engine import make_engine, mixed_prompts, run
from test_kernels_norm import gpu_like_rounding  # noqa: F401  (fixture)
from triton_support import DEVICE, ON_GPU, import_triton

triton = import_triton()

from dlx.params import SamplingParams  # noqa: E402
from dlx.kernels import sampling  # noqa: E402


def logits_case(rows: int, vocab: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (4 * torch.randn(rows, vocab, generator=gen)).to(dtype).to(DEVICE)


def assert_matches_reference(logits: torch.Tensor, exclude_id: int | None, **kwargs) -> torch.Tensor:
    """Ids exactly; probabilities to 1e-5 relative: the kernel sums exp online (rescaling as the max grows)
    and with exp2, the reference in one pass after the max, so sums differ by a few fp32 ulps per rescale."""
    expected_ids, expected_probs = sampling.argmax_prob_reference(logits, exclude_id)
    ids, probs = sampling.argmax_prob_triton(logits, exclude_id, **kwargs)
    assert ids.dtype == torch.int64 and probs.dtype == torch.float32
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(probs, expected_probs, rtol=1e-5, atol=1e-7)
    return ids


@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 33])
def test_matches_reference(rows, dtype, num_splits):
    # 1000 ids in tiles of 128: the last tile is ragged; 3 splits own 384, 384 and 232 ids.
    logits = logits_case(rows, 1000, dtype, seed=rows)
    assert_matches_reference(logits, exclude_id=rows * 13, block_v=128, num_splits=num_splits)
    assert_matches_reference(logits, exclude_id=None)   # default tile (1024, one ragged tile) and splits


def test_ties_take_the_lowest_id():
    logits = logits_case(5, 1000, torch.float32, seed=9)
    logits[0, [700, 3, 450]] = 30.0     # across tiles and splits
    logits[1, [130, 2]] = 30.0          # the same lane (2 and 130 = 2 + 128) in different tiles
    logits[2, [999, 998]] = 30.0        # in the ragged last tile
    logits[3, :] = 1.0                  # everything ties
    logits[4, [500, 501]] = 30.0        # one split only
    for splits in (1, 2, 3, 8):
        ids = assert_matches_reference(logits, None, block_v=128, num_splits=splits)
        assert ids.tolist() == [3, 2, 998, 0, 500]


def test_excluded_id_never_wins():
    logits = logits_case(4, 600, torch.float32, seed=10)
    logits[:, 77] = 50.0                # the mask token is every row's maximum
    logits[1, 12] = logits[1, 300] = 40.0
    ids = assert_matches_reference(logits, 77, block_v=64, num_splits=2)
    assert 77 not in ids.tolist() and ids[1] == 12
    assert (assert_matches_reference(logits, None, block_v=64) == 77).all()
    assert (assert_matches_reference(logits, -523, block_v=64) != 77).all()   # -523 % 600 == 77, as indexing
    logits[2, 0] = 60.0
    assert assert_matches_reference(logits, 0, block_v=64)[2] == 77


def test_online_rescaling_is_accurate():
    # An ascending ramp raises every lane's max in every tile (a rescale per element); against float64 the
    # kernel's probability is within 1e-6 relative (measured ~1e-7; fp32 sums of 5000 terms).
    vocab = 5000
    ramp = torch.linspace(-20, 20, vocab)
    logits = torch.stack([ramp, ramp.flip(0), torch.zeros(vocab),
                          10 * logits_case(1, vocab, torch.float32, 14)[0].cpu()])
    logits = logits.to(DEVICE)
    for splits in (1, 4):
        ids, probs = sampling.argmax_prob_triton(logits, None, block_v=128, num_splits=splits)
        exact = 1 / torch.exp(logits.double() - logits.double().max(-1, keepdim=True).values).sum(-1)
        torch.testing.assert_close(probs.double(), exact, rtol=1e-6, atol=0)
        assert torch.equal(ids, sampling.argmax_prob_reference(logits, None)[0])


def test_bf16_logits_with_many_ties():
    # Coarse bf16 values: exact ties everywhere, the case where lowest-id matters most.
    gen = torch.Generator().manual_seed(11)
    logits = torch.randint(-8, 9, (17, 777), generator=gen).to(torch.bfloat16).to(DEVICE) / 4
    for splits in (1, 4):
        assert_matches_reference(logits, 5, block_v=64, num_splits=splits)


def test_strided_rows_and_split_choice():
    logits = logits_case(6, 1200, torch.float32, seed=12)[:, 100:1100]   # rows with stride 1200
    assert_matches_reference(logits, 3, block_v=256, num_splits=2)
    choose = sampling.choose_num_splits
    assert choose(rows=32, vocab=157184, num_sms=132) == 9
    assert choose(rows=1, vocab=157184, num_sms=132) == 19        # every split ≥ 8192 ids
    assert choose(rows=256, vocab=157184, num_sms=132) == 2
    assert choose(rows=2048, vocab=157184, num_sms=132) == 1
    assert choose(rows=4, vocab=561, num_sms=132) == 1


def test_dispatch():
    logits = logits_case(3, 300, torch.float32, seed=13)
    for impl in ("naive", "triton"):
        ids, _ = sampling.argmax_prob(logits, 7, impl)
        assert torch.equal(ids, sampling.argmax_prob_reference(logits, 7)[0])
    with pytest.raises(ValueError, match="unknown sampling impl"):
        sampling.argmax_prob(logits, 7, "cuda")
    ids, probs = sampling.argmax_prob_triton(logits[:0], 7)
    assert ids.shape == probs.shape == (0,)


@pytest.mark.skipif(ON_GPU, reason="the shared tiny model lives on the CPU; test_engine_triton runs every kernel "
                                    "through the engine on the GPU")
def test_engine_greedy_tokens_identical_with_the_kernel(tiny_dir, tiny_model):
    # The sampler's greedy path on the kernel (fp32 logits): same tokens and steps; the sampled request
    # keeps the PyTorch path. (The model kernels are compared at the logits, in test_kernels_rotary.)
    prompts = [p for p in mixed_prompts(8, seed=5) if len(p) < 100][:2]
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0.8, top_k=20, seed=3, max_tokens=12, ignore_eos=True)]
    naive = run(make_engine(tiny_dir, tiny_model), prompts, params)
    engine = make_engine(tiny_dir, tiny_model)
    engine.sampler.impl = "triton"
    with_kernel = run(engine, prompts, params)
    assert [(r.output, r.nfe) for r in with_kernel] == [(r.output, r.nfe) for r in naive]


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 32, 256, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llada2_mini_vocab(rows, dtype):
    # LLaDA2.0-mini vocabulary (157184 ids), automatic tiles and splits; the excluded id is each row's max.
    logits = logits_case(rows, 157184, dtype, seed=rows)
    logits[:, 156895] = 100.0
    ids = assert_matches_reference(logits, 156895)
    assert not (ids == 156895).any()
