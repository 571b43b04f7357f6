"""LoRA adapters written by `peft` on the tiny LLaDA2 checkpoint: pre-merged weights equal peft's own merge, the
run-time path equals the merged one, a zero adapter changes nothing, batches mix adapters, errors are clear."""
import json
import os

import pytest
import torch

from dlx import LLM, SamplingParams
from dlx.config import Config, ConfigError
from dlx.models import load_model
from dlx.models.lora import read_adapter
from dlx.models.lora_layers import serve_adapters
from dlx.params import lora_scale
from lora_support import adapter_logits, rewrite_tensor

# fp32 tiny model: the run-time products (x·Aᵀ)·Bᵀ and the merged (W + B·A)·x differ only by rounding, which
# three layers grow to about 1e-5 of the largest logit (measured 7e-6); the tolerance is 2e-5 of it.
LOGIT_TOL = 2e-5


@pytest.fixture
def adapters(lora_adapters):
    return lora_adapters


def test_pre_merge_equals_peft_merge(tiny_dir, adapters):
    model = load_model(tiny_dir, dtype="float32")
    serve_adapters(model, adapters["a"], pre_merge=True)
    merged = {n: m.weight for n, m in adapters["peft"].merge_and_unload().named_modules() if hasattr(m, "weight")}
    layer0, layer1 = model.layers[0], model.layers[1]
    inter = model.config.moe_intermediate_size
    pairs = [(layer0.attention.query_key_value.weight, "model.layers.0.attention.query_key_value"),
             (layer0.attention.dense.weight, "model.layers.0.attention.dense"),
             (layer0.mlp.gate_up_proj.weight[model.config.intermediate_size:], "model.layers.0.mlp.up_proj"),
             (layer1.mlp.w13[3][:inter], "model.layers.1.mlp.experts.3.gate_proj"),
             (layer1.mlp.w2[5], "model.layers.1.mlp.experts.5.down_proj"),
             (layer1.mlp.shared_experts.down_proj.weight, "model.layers.1.mlp.shared_experts.down_proj")]
    for ours, name in pairs:
        torch.testing.assert_close(ours, merged[name], rtol=0, atol=1e-6, msg=name)


def test_runtime_equals_merged_and_adapter_changes_output(tiny_dir, adapters):
    base = adapter_logits(tiny_dir)
    merged = adapter_logits(tiny_dir, adapters["a"], pre_merge=True)
    runtime = adapter_logits(tiny_dir, adapters["a"], rows=0)
    torch.testing.assert_close(runtime, merged, rtol=0, atol=LOGIT_TOL * merged.abs().max().item())
    assert (merged - base).abs().max() > 0.1
    assert torch.equal(runtime.argmax(-1), merged.argmax(-1))
    assert torch.equal(adapter_logits(tiny_dir, adapters["a"], rows=-1), base)   # rows without an adapter: the base


def test_zero_adapter_changes_nothing(tiny_dir, adapters):
    base = adapter_logits(tiny_dir)
    assert torch.equal(adapter_logits(tiny_dir, adapters["zero"], rows=0), base)
    torch.testing.assert_close(adapter_logits(tiny_dir, adapters["zero"], pre_merge=True), base, rtol=0, atol=0)


def test_rslora_scale(adapters):
    assert lora_scale({"r": 4, "lora_alpha": 8}) == 2.0
    assert lora_scale({"r": 4, "lora_alpha": 8, "use_rslora": True}) == 4.0
    with open(os.path.join(adapters["b"], "adapter_config.json")) as f:
        assert json.load(f)["use_rslora"] is True


def test_engine_runtime_and_merged_give_the_same_greedy_tokens(tiny_dir, adapters):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    common = dict(dtype="float32", device="cpu", max_model_len=128)
    merged = LLM(tiny_dir, lora_path=adapters["a"], pre_merge_lora=True, **common).generate("hello there", params)
    runtime = LLM(tiny_dir, lora_path=adapters["a"], **common).generate("hello there", params)
    base = LLM(tiny_dir, **common).generate("hello there", params)
    assert merged[0].token_ids == runtime[0].token_ids != base[0].token_ids


def test_batch_mixing_two_adapters_and_the_base(tiny_dir, adapters):
    llm = LLM(tiny_dir, lora_path=f"a={adapters['a']},b={adapters['b']}", dtype="float32", device="cpu",
              max_model_len=128, buffer_size=2)
    prompts = ["hello there", "Solve: 12 + 30.", [5, 6, 7, 8]]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, lora=name) for name in ("a", "b", None)]
    together = llm.generate(prompts, params)
    alone = [llm.generate(p, sp)[0] for p, sp in zip(prompts, params)]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]
    swapped = llm.generate(prompts[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, lora="b"))
    assert swapped[0].token_ids != together[0].token_ids
    with pytest.raises(ValueError, match="unknown LoRA adapter 'c'"):
        llm.generate("hi", SamplingParams(lora="c"))


def test_adapter_for_another_base_names_the_tensor(tiny_dir, adapters, tmp_path):
    import shutil
    bad = str(tmp_path / "bad")
    shutil.copytree(adapters["a"], bad)
    rewrite_tensor(bad, "layers.1.attention.dense.lora_A.weight", lambda t: torch.zeros(t.shape[0], 32))
    cfg = load_model(tiny_dir, dtype="float32").config
    with pytest.raises(ValueError, match=r"'base_model\.model\.model\.layers\.1\.attention\.dense\.lora_A\.weight' "
                                         r"has shape \[4, 32\].*another base model"):
        read_adapter(bad, cfg)
    rewrite_tensor(bad, "layers.1.attention.dense.lora_A.weight",
                   lambda t: torch.zeros(4, 64))   # restore a sane shape, then point a tensor at the router
    os.rename(bad, str(tmp_path / "bad2"))
    from safetensors.torch import load_file, save_file
    path = str(tmp_path / "bad2" / "adapter_model.safetensors")
    tensors = {k.replace("layers.2.mlp.experts.0.gate_proj", "layers.2.mlp.gate"): v
               for k, v in load_file(path).items()}
    save_file(tensors, path)
    with pytest.raises(ValueError, match="module 'model.layers.2.mlp.gate', which is not a linear layer"):
        read_adapter(str(tmp_path / "bad2"), cfg)


def test_config_errors(tiny_dir, adapters, tmp_path):
    def finalize(**kw):
        return Config(model=tiny_dir, device="cpu", **kw).finalize(cuda_available=False)
    with pytest.raises(ConfigError, match="has no adapter_config.json"):
        finalize(lora_path=str(tmp_path))
    with pytest.raises(ConfigError, match="--use-lora needs --lora-path"):
        finalize(use_lora=True)
    with pytest.raises(ConfigError, match="folds one adapter"):
        finalize(lora_path=f"a={adapters['a']},b={adapters['b']}", pre_merge_lora=True)
    with pytest.raises(ConfigError, match="name=path pairs"):
        finalize(lora_path=f"a={adapters['a']},{adapters['b']}")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "adapter_model.safetensors").write_bytes(b"")
    (unknown / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["q_proj"]}))
    with pytest.raises(ConfigError, match="targets 'q_proj', which is not a linear layer of LLaDA2"):
        finalize(lora_path=str(unknown))


@pytest.mark.slow
def test_tensor_parallel_with_adapters_equals_one_rank(tiny_dir, adapters, tmp_path):
    """TP 2 on gloo: each rank holds its slice of the layers and of the adapters; a batch mixing both adapters
    and the base gives the logits of one rank."""
    import torch.multiprocessing as mp
    from lora_support import tp_lora_worker
    from tests_support import free_port
    spec, rows = f"a={adapters['a']},b={adapters['b']}", [0] * 5 + [-1] * 4 + [1] * 7
    out = str(tmp_path / "logits.pt")
    mp.start_processes(tp_lora_worker, args=(2, tiny_dir, spec, free_port(), rows, out), nprocs=2,
                       start_method="spawn")
    torch.testing.assert_close(torch.load(out), adapter_logits(tiny_dir, spec, rows=rows), rtol=1e-4, atol=1e-4)
