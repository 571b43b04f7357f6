"""Start-up validation: bad flag combinations fail with one clear sentence before anything is spawned."""
import subprocess
import sys

import pytest

from dlx.config import Config, ConfigError
from server_support import ROOT


def finalize(tiny_dir, **kw):
    return Config(model=tiny_dir, **kw).finalize(cuda_available=False)


@pytest.mark.parametrize("kw,message", [
    ({"block_size": 24}, "--block-size 24 must divide --page-size 32"),
    ({"tensor_parallel_size": 3}, "--tensor-parallel-size 3 must divide the 4 attention heads"),
    ({"max_model_len": 100}, "must be a multiple of --block-size"),
    ({"max_num_batched_tokens": 64}, "--max-num-batched-tokens 64 must be at least --max-model-len"),
    ({"sampling_mode": "greedy"}, "--sampling-mode must be one of naive, edit"),
    ({"attn_impl": "flash"}, "--attn-impl must be one of"),
    ({"moe_impl": "cutlass"}, "--moe-impl must be one of auto, triton, naive"),
    ({"admission_wait_ms": -1.0}, "--admission-wait-ms must be between 0 and 1000"),
    ({"accept_threshold": 1.5}, "--accept-threshold must be between 0 and 1"),
    ({"use_lora": True}, "--use-lora needs --lora-path"),
    ({"device": "cuda"}, "no CUDA GPU is visible"),
    ({"buffer_size": 0}, "--buffer-size must be at least 1"),
])
def test_bad_combinations(tiny_dir, kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        finalize(tiny_dir, **kw)


@pytest.mark.parametrize("cores,expected", [(1, 2), (2, 2), (16, 4), (24, 6), (128, 8)])
def test_frontend_workers_follow_the_cores_unless_chosen(tiny_dir, monkeypatch, cores, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert finalize(tiny_dir).frontend_workers == expected
    assert finalize(tiny_dir, frontend_workers=3).frontend_workers == 3
    with pytest.raises(ConfigError, match="--frontend-workers must be at least 1"):
        finalize(tiny_dir, frontend_workers=0)


def test_missing_model_dir(tmp_path):
    with pytest.raises(ConfigError, match="is not a model directory"):
        Config(model=str(tmp_path / "nothing")).finalize(cuda_available=False)


def test_cpu_fallback_and_clamping(tiny_dir):
    cfg = finalize(tiny_dir, max_model_len=8192)
    assert cfg.device == "cpu" and cfg.attn_impl == "naive" and cfg.moe_impl == "naive"
    assert cfg.max_model_len == 4096
    assert len(cfg.warnings) == 2


@pytest.mark.parametrize("attn,moe,expected", [("triton_grouped", "auto", "triton"), ("naive", "auto", "naive"),
                                               ("naive", "triton", "triton"), ("triton_grouped", "naive", "naive")])
def test_moe_impl_follows_attention_unless_chosen(tiny_dir, attn, moe, expected):
    cfg = Config(model=tiny_dir, device="cuda", attn_impl=attn, moe_impl=moe)
    cfg._choose_device(cuda_available=True)
    assert cfg.moe_impl == expected


@pytest.mark.parametrize("settings,graphs", [({}, True), ({"enforce_eager": True}, False),
                                             ({"disable_cuda_graphs": True}, False),
                                             ({"attn_impl": "naive"}, False), ({"moe_impl": "naive"}, False)])
def test_cuda_graphs_on_a_gpu_with_the_triton_kernels_unless_turned_off(tiny_dir, settings, graphs):
    cfg = Config(model=tiny_dir, device="cuda", **settings)
    cfg._choose_device(cuda_available=True)
    assert cfg.cuda_graphs is graphs
    assert not finalize(tiny_dir).cuda_graphs   # never on the CPU


def test_cpu_refuses_triton_moe_with_one_warning(tiny_dir):
    cfg = finalize(tiny_dir, attn_impl="naive", moe_impl="triton")
    assert cfg.moe_impl == "naive" and len(cfg.warnings) == 1


def test_launch_fails_fast_with_one_sentence(tiny_dir):
    out = subprocess.run([sys.executable, "launch.py", "--model", tiny_dir, "--block-size", "24"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "dlx: error: --block-size 24 must divide --page-size 32"


@pytest.mark.parametrize("cpus,dp,message", [
    ("x", 1, "--engine-cpus must list CPUs like 2,3 or 2-3, not 'x'"),
    ("2,3", 1, "--engine-cpus 2,3 must name one distinct CPU per engine worker (1)"),
    ("2,2", 2, "must name one distinct CPU per engine worker (2)"),
    ("9", 1, "--engine-cpus 9 must be CPUs this process may use"),
    ("0-3", 4, "leave at least one for the frontends"),
])
def test_engine_cpus_are_checked(tiny_dir, monkeypatch, cpus, dp, message):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        finalize(tiny_dir, engine_cpus=cpus, data_parallel_size=dp)


def test_engine_cpus_in_worker_order_and_the_rest_for_frontends(tiny_dir, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    cfg = finalize(tiny_dir, engine_cpus="3, 1", data_parallel_size=2)
    assert cfg.engine_cpu_list() == [3, 1] and cfg.frontend_cpus() == {0, 2}
    assert finalize(tiny_dir, engine_cpus="1-2", data_parallel_size=2).engine_cpu_list() == [1, 2]
    assert finalize(tiny_dir).engine_cpu_list() == []


def test_unserved_model_type_is_one_sentence(tiny_dir, tmp_path):
    import json
    import shutil
    model_dir = str(tmp_path / "other")
    shutil.copytree(tiny_dir, model_dir)
    with open(f"{model_dir}/config.json") as f:
        raw = json.load(f)
    with open(f"{model_dir}/config.json", "w") as f:
        json.dump({**raw, "model_type": "gemma4"}, f)
    with pytest.raises(ConfigError, match=r"model_type 'gemma4' \(config.json\) is not served by dlx \(served: "
                                          r"llada2_moe, diffusion_gemma\)"):
        finalize(model_dir)


def test_served_model_types_are_the_loaders_families():
    from dlx.config import SERVED_MODEL_TYPES
    from dlx.models.loader import FAMILIES
    assert sorted(FAMILIES) == sorted(SERVED_MODEL_TYPES)
