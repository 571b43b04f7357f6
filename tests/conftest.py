"""Shared fixtures: tiny checkpoints made once per session, loaded models, tokenizers.
GPU-marked tests are skipped on machines without CUDA."""
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # Triton kernels run in the interpreter on CPU
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    from dlx.models.tiny import write_tiny_llada2
    """EOS boosted so that stopping paths are exercised."""
    return write_tiny_llada2(str(tmp_path_factory.mktemp("tiny")), seed=0, eos_boost=1.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from dlx.models import load_model
    return load_model(tiny_dir, dtype="float32")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def lora_adapters(tiny_dir, tmp_path_factory) -> dict:
    """Adapters written by peft for the tiny checkpoint: "a" (rank 4, every linear layer), "b" (rank 2, rslora,
    some layers), "zero" (B = 0); "peft" is a's peft model (its merge is the reference)."""
    from lora_support import write_peft_adapter
    root = tmp_path_factory.mktemp("lora")
    peft_model = write_peft_adapter(tiny_dir, str(root / "a"), seed=1)
    write_peft_adapter(tiny_dir, str(root / "b"), seed=2, rank=2, rslora=True,
                       targets=("query_key_value", "gate_proj", "down_proj"))
    write_peft_adapter(tiny_dir, str(root / "zero"), seed=3, zero_b=True)
    return {"a": str(root / "a"), "b": str(root / "b"), "zero": str(root / "zero"), "peft": peft_model}


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory) -> str:
    """A tiny random DiffusionGemma checkpoint with a tokenizer, written by transformers' own classes."""
    from dlx.models.tiny_gemma import write_tiny_diffusion_gemma
    return write_tiny_diffusion_gemma(str(tmp_path_factory.mktemp("gemma")), seed=0, tokenizer=True)


@pytest.fixture(scope="session")
def gemma_model(gemma_dir):
    from dlx.models import load_model
    return load_model(gemma_dir, "float32")


@pytest.fixture(scope="session")
def gemma_shape_dir(tmp_path_factory) -> str:
    """A config-only DiffusionGemma directory (the shape writer's files, --load-format dummy) of tiny widths: the
    tiny checkpoint's text model with 16 experts (so the distinct-experts statistic means something) and a
    vocabulary above the shape tokenizer's 384 ids."""
    from dlx.models.shapes import shape_config, write_config_dir
    from dlx.models.tiny_gemma import TINY_CANVAS, TINY_TEXT
    raw = shape_config("diffusion_gemma")
    raw["canvas_length"] = TINY_CANVAS
    raw["text_config"] = {**raw["text_config"], **TINY_TEXT, "vocab_size": 512, "num_experts": 16}
    return write_config_dir(str(tmp_path_factory.mktemp("gemma_shape")), raw)
