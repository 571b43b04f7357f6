"""CUDA-graph bucketing and static buffers on the CPU: which (requests, rows, logit rows) bucket a step lands in,
how its inputs are padded, and that the engine decodes the same tokens through the bucketed, padded buffers
("replay" runs the captured function eagerly here; the capture itself is tested on the GPU)."""
import pytest
import torch

from dlx.config import Config
from dlx.engine.engine import LLMEngine
from dlx.engine.graphs import GraphPlan, logit_buckets, request_buckets
from dlx.engine.step_io import StepBuffers, StepInputs
from dlx.kernels import fused_impl
from dlx.params import SamplingParams
from test_engine import run
from triton_support import DEVICE, ON_GPU, import_triton

import_triton()


def test_buckets():
    assert request_buckets(128) == [1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128]
    assert request_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert request_buckets(1) == [1]
    assert logit_buckets(1000) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1000]


def test_every_decode_step_lands_in_a_captured_bucket():
    plan = GraphPlan.build(max_requests=40, block_size=4, buffer_size=2, max_rows=4096)
    keys = set(plan.body_keys())
    assert plan.max_query_len == 12
    for requests in range(1, 41):
        for rows in range(4 * requests, 12 * requests + 1, 4):   # each request computes 1 to 3 blocks
            inputs = StepInputs([0] * rows, [], [], [4] * (requests - 1) + [rows - 4 * (requests - 1)], [], [], [])
            if max(inputs.query_lens) > 12:
                assert plan.body_key(inputs) is None   # a prefill-sized request: eager
                continue
            key = plan.body_key(inputs)
            assert key in keys and key[0] >= requests and key[1] >= rows
    assert max(plan.logit_rows) == 40 * 4 * 2


def test_bucket_limits():
    plan = GraphPlan.build(max_requests=500, block_size=32, buffer_size=1, max_rows=2048)
    assert max(plan.requests) == 128                  # larger batches run eagerly
    assert max(plan.rows) == 2048                     # never past the buffers
    too_many_rows = StepInputs([0] * 2080, [], [], [32] * 65, [], [], [])
    assert plan.body_key(too_many_rows) is None


def test_padded_load():
    buffers = StepBuffers(rows=16, requests=4, pages=3, logit_rows=8, device=torch.device("cpu"))
    inputs = StepInputs(ids=[5, 6, 7, 8, 9], positions=[8, 9, 10, 11, 3], slots=[40, 41, -1, -1, 3],
                        query_lens=[4, 1], context_lens=[8, 3], tables=[[5, 2], [0]], logit_rows=[2, 3, 4])
    dev = buffers.load(inputs, requests=3, rows=8, logit_rows=4)
    assert dev.ids.tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
    assert dev.positions.tolist() == [8, 9, 10, 11, 3, -1, -1, -1]
    assert dev.slots.tolist() == [40, 41, -1, -1, 3, -1, -1, -1]
    assert dev.cu_seqlens.tolist() == [0, 4, 5, 5]         # the padding request owns no row
    assert dev.context_lens.tolist() == [8, 3, 0]
    assert dev.page_tables[0, :2].tolist() == [5, 2] and dev.page_tables[1, 0].item() == 0
    assert dev.logit_rows.tolist() == [2, 3, 4, 0]
    smaller = buffers.load(StepInputs([1, 2], [0, 1], [0, 1], [2], [0], [[7]], [1]))
    assert smaller.ids.tolist() == [1, 2] and smaller.cu_seqlens.tolist() == [0, 2]
    assert smaller.page_tables.shape == (1, 3) and smaller.logit_rows.tolist() == [1]
    assert not buffers.fits(StepInputs([0] * 17, [], [], [17], [0], [[1]], []))


def engine(tiny_dir, impl: str, graphs: bool, lora_path: str = "") -> LLMEngine:
    """Blocks of 8 and two in flight: steps of one to three blocks a request, buckets small enough for the
    interpreter."""
    cfg = Config(model=tiny_dir, dtype="float32", device=DEVICE, max_model_len=64, block_size=8, page_size=8,
                 buffer_size=2, num_kv_pages=40, max_num_reqs=4, lora_path=lora_path).finalize(cuda_available=ON_GPU)
    cfg.attn_impl, cfg.moe_impl = impl, fused_impl(impl)
    cfg.enforce_eager = not graphs
    eng = LLMEngine(cfg)
    if graphs and not ON_GPU:
        eng.runner.use_graphs(cfg.max_num_reqs, cfg.buffer_size, cfg.max_model_len)
    return eng


@pytest.mark.slow
def test_graphs_decode_the_same_tokens(tiny_dir):
    """Against the PyTorch path (test_engine_triton holds the Triton kernels equal to it): greedy and seeded
    sampled requests, steps in and out of the buckets."""
    prompts = [[7], [9, 11, 13], list(range(20, 33))]
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)] * 2 + [
        SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True)]
    eager = run(engine(tiny_dir, "naive", graphs=False), prompts, params)
    graphed_engine = engine(tiny_dir, "triton_grouped", graphs=True)
    graphed = run(graphed_engine, prompts, params)
    assert [r.output for r in graphed] == [r.output for r in eager]
    assert [r.nfe for r in graphed] == [r.nfe for r in eager]
    assert graphed_engine.runner.graphs.replays > 0          # decode steps went through the buckets
    assert graphed_engine.runner.graphs.replays < sum(r.nfe for r in graphed)   # prefills did not


@pytest.mark.slow
def test_graphs_hold_run_time_adapters(tiny_dir, lora_adapters):
    """Two run-time LoRA adapters and the base in one batch: through the graphs' buffers (the adapter of each row
    is one of their fields, the one-hot built inside the body) the tokens of the PyTorch path."""
    lora_path = f"a={lora_adapters['a']},b={lora_adapters['b']}"
    prompts = [[7, 8], [9, 11, 13], list(range(20, 30))]
    params = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, lora=name) for name in ("a", None, "b")]
    eager = run(engine(tiny_dir, "naive", graphs=False, lora_path=lora_path), prompts, params)
    graphed_engine = engine(tiny_dir, "triton_grouped", graphs=True, lora_path=lora_path)
    graphed = run(graphed_engine, prompts, params)
    base = run(engine(tiny_dir, "naive", graphs=False), prompts, params[1:2] * 3)
    assert [r.output for r in graphed] == [r.output for r in eager]
    assert eager[0].output != base[0].output and eager[2].output != base[2].output   # the adapters mattered
    assert eager[1].output == base[1].output
    assert graphed_engine.runner.graphs.replays > 0


def gpu_engine(model_dir: str, dtype: str, graphs: bool, **settings) -> LLMEngine:
    # A fixed KV size: sized from free memory, the second engine of a pair would find the first one's cache.
    settings.setdefault("num_kv_pages", 512)
    cfg = Config(model=model_dir, dtype=dtype, device="cuda", max_num_reqs=16, enforce_eager=not graphs,
                 **settings).finalize()
    eng = LLMEngine(cfg)
    assert eng.runner.graphs.capturing == graphs   # eager: the same buckets, uncaptured
    return eng


@pytest.mark.gpu
def test_graphs_on_and_off_decode_the_same_tokens_on_the_gpu(tmp_path):
    """The trained embedded model (fp32 and bf16) and a LLaDA2.0-mini-shaped dummy model (bf16, two layers, 64
    steps a request): the same greedy tokens captured and eager, batches of 1 and 12."""
    from dlx.config import EMBEDDED_MODEL_DIR
    from dlx.models.shapes import write_shape_dir
    mini = write_shape_dir(str(tmp_path / "mini"), "mini", layers=2)
    cases = [(EMBEDDED_MODEL_DIR, "float32", {}), (EMBEDDED_MODEL_DIR, "bfloat16", {}),
             (mini, "bfloat16", {"load_format": "dummy", "max_model_len": 1024, "num_kv_pages": 512})]
    for model_dir, dtype, settings in cases:
        for count in (1, 12):
            prompts = [[(31 * i + 7 * j) % 200 + 3 for j in range(5 + 9 * i)] for i in range(count)]
            params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True, threshold=1.0)
            eager = run(gpu_engine(model_dir, dtype, False, **settings), prompts, params)
            graphed_engine = gpu_engine(model_dir, dtype, True, **settings)
            graphed = run(graphed_engine, prompts, params)
            assert [r.output for r in graphed] == [r.output for r in eager], (model_dir, dtype, count)
            assert graphed_engine.runner.graphs.replays >= 60
