"""Checkpoint loading: single/sharded/bf16 round trips, stacked expert names, clear errors."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlx.kernels.attention import AttentionMetadata
from dlx.models import load_model
from dlx.models.tiny import write_tiny_llada2


def logits_of(model, ids):
    ids = torch.tensor(ids)
    meta = AttentionMetadata.single(len(ids), 32)
    return model.compute_logits(model(ids, torch.arange(len(ids)), meta))


def test_sharded_checkpoint_equals_single(tiny_dir, tiny_model, tmp_path):
    sharded = write_tiny_llada2(str(tmp_path / "sharded"), seed=0, shards=3, eos_boost=1.0)
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) == 3
    other = load_model(sharded, dtype="float32")
    for (name, a), (_, b) in zip(tiny_model.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), name


def test_weights_match_file(tiny_dir, tiny_model):
    raw = load_file(os.path.join(tiny_dir, "model.safetensors"))
    layer = tiny_model.layers[1]
    assert torch.equal(layer.attention.query_key_value.weight, raw["model.layers.1.attention.query_key_value.weight"])
    inter = layer.mlp.local_intermediate
    assert torch.equal(layer.mlp.w13[5, :inter], raw["model.layers.1.mlp.experts.5.gate_proj.weight"])
    assert torch.equal(layer.mlp.w13[5, inter:], raw["model.layers.1.mlp.experts.5.up_proj.weight"])
    assert torch.equal(layer.mlp.w2[5], raw["model.layers.1.mlp.experts.5.down_proj.weight"])
    assert torch.equal(layer.mlp.gate.expert_bias, raw["model.layers.1.mlp.gate.expert_bias"])
    dense = tiny_model.layers[0].mlp
    assert torch.equal(dense.gate_up_proj.weight[128:], raw["model.layers.0.mlp.up_proj.weight"])


def test_bf16_checkpoint_loads_in_its_dtype(tmp_path, tiny_model):
    path = write_tiny_llada2(str(tmp_path / "bf16"), seed=0, dtype="bfloat16", eos_boost=1.0)
    model = load_model(path)  # auto: torch_dtype from config.json
    assert model.lm_head.weight.dtype == torch.bfloat16
    ids = list(range(3, 40))
    ref = logits_of(tiny_model, ids)
    got = logits_of(model, ids)
    assert torch.isfinite(got).all()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8
    as_fp32 = load_model(path, dtype="float32")
    assert as_fp32.lm_head.weight.dtype == torch.float32


def test_stacked_expert_names_load_identically(tiny_dir, tiny_model, tmp_path):
    out = tmp_path / "stacked"
    shutil.copytree(tiny_dir, out)
    raw = load_file(str(out / "model.safetensors"))
    cfg = json.load(open(out / "config.json"))
    for i in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts."
        n = cfg["num_experts"]
        gate = torch.stack([raw.pop(f"{p}{j}.gate_proj.weight") for j in range(n)])
        up = torch.stack([raw.pop(f"{p}{j}.up_proj.weight") for j in range(n)])
        raw[p + "gate_up_proj"] = torch.cat([gate, up], dim=1).contiguous()
        raw[p + "down_proj"] = torch.stack([raw.pop(f"{p}{j}.down_proj.weight") for j in range(n)]).contiguous()
    save_file(raw, str(out / "model.safetensors"))
    model = load_model(str(out), dtype="float32")
    for (name, a), (_, b) in zip(tiny_model.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


def broken_copy(tiny_dir, tmp_path, edit):
    out = tmp_path / "broken"
    shutil.copytree(tiny_dir, out)
    raw = load_file(str(out / "model.safetensors"))
    edit(raw)
    save_file(raw, str(out / "model.safetensors"))
    return str(out)


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    path = broken_copy(tiny_dir, tmp_path, lambda r: r.pop("model.layers.2.mlp.experts.3.up_proj.weight"))
    with pytest.raises(ValueError, match=r"'model\.layers\.2\.mlp\.experts\.3\.up_proj\.weight' is missing"):
        load_model(path)


def test_unexpected_tensor_is_named(tiny_dir, tmp_path):
    path = broken_copy(tiny_dir, tmp_path, lambda r: r.__setitem__("model.layers.0.mystery.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.mystery\.weight'"):
        load_model(path)


def test_misshaped_tensor_is_named(tiny_dir, tmp_path):
    path = broken_copy(tiny_dir, tmp_path, lambda r: r.__setitem__("model.norm.weight", torch.ones(63)))
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' has shape \[63\] but the config implies \[64\]"):
        load_model(path)


def test_missing_directory_and_files(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(tmp_path / "nowhere"))
    out = tmp_path / "noweights"
    out.mkdir()
    shutil.copy(os.path.join(tiny_dir, "config.json"), out)
    with pytest.raises(ValueError, match="neither model.safetensors nor"):
        load_model(str(out))
    cfg = json.load(open(out / "config.json"))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(out / "config.json", "w"))
    with pytest.raises(ValueError, match="model_type 'gpt2'.*not supported"):
        load_model(str(out))


def test_optional_expert_bias_absent_means_zero(tiny_dir, tmp_path):
    def drop_bias(raw):
        for k in [k for k in raw if k.endswith("expert_bias")]:
            raw.pop(k)
    path = broken_copy(tiny_dir, tmp_path, drop_bias)
    cfg = json.load(open(os.path.join(path, "config.json")))
    cfg.pop("moe_router_enable_expert_bias")
    json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
    model = load_model(path, dtype="float32")
    assert torch.count_nonzero(model.layers[1].mlp.gate.expert_bias) == 0
