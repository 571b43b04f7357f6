"""The dlx-tiny training script: its smoke run writes a servable checkpoint and its forward equals serving's.
Also pins the corpus contract: a deterministic held-out split disjoint from training, and the trained prompt formats."""
import json
import math
import os
import sys

import pytest
import torch

from dlx.kernels.attention import AttentionMetadata
from dlx.models import load_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import tiny_corpus  # noqa: E402
import train_tiny  # noqa: E402

BLOCK = tiny_corpus.BLOCK


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dlx-tiny"))
    return out, train_tiny.main(["--out", out, "--smoke", "--device", "cpu", "--minutes", "5"])


@pytest.fixture(scope="module")
def smoke_tokenizer(smoke_run):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smoke_run[0], local_files_only=True)


def random_model(seed: int = 1):
    """A smoke-size model with non-trivial norms and expert biases, so routing and scaling are exercised."""
    torch.manual_seed(seed)
    model = train_tiny.build_model(train_tiny.model_config(train_tiny.SMOKE, 97, 0), torch.device("cpu"), seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p)) if "norm" in name else p.copy_(0.05 * torch.randn_like(p))
    return model


def test_smoke_run_writes_a_checkpoint_dlx_loads(smoke_run):
    out, summary = smoke_run
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert summary["steps"] == train_tiny.SMOKE["steps"] and math.isfinite(summary["last_loss"])
    assert summary["checkpoint_bytes"] <= 40 * 2 ** 20
    assert set(summary["heldout"]) >= set(tiny_corpus.HELDOUT_KINDS) | {"mixed_raw", "mixed_chat", "tokens_per_forward"}
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == "llada2_moe" and config["torch_dtype"] == "bfloat16"
    assert config["eos_token_id"] == config["pad_token_id"] and config["max_position_embeddings"] == 1024
    model = load_model(out)
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.layers[1].mlp.gate.expert_bias.dtype == torch.float32
    assert model.layers[1].mlp.gate.expert_bias.abs().sum() > 0  # the balancing rule moved it and it was saved
    fp32 = load_model(out, dtype="float32")
    ids = torch.arange(3, 40)
    logits = fp32.compute_logits(fp32(ids, torch.arange(len(ids)), AttentionMetadata.single(len(ids), BLOCK)))
    assert torch.isfinite(logits).all() and logits.shape == (len(ids), config["vocab_size"])


def test_tokenizer_loads_offline_renders_chat_and_splits_digits(smoke_run, smoke_tokenizer):
    tok = smoke_tokenizer
    assert tok.eos_token == "<|endoftext|>" and tok.mask_token == "<|mask|>"
    assert json.load(open(os.path.join(smoke_run[0], "config.json")))["eos_token_id"] == tok.eos_token_id
    for messages in ([("user", "Solve: 12 + 30.")],
                     [("system", "Be brief."), ("user", "Hi!"), ("assistant", "Hello!"), ("user", "Who are you?")]):
        rendered = tok.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                           add_generation_prompt=True)
        assert rendered == tiny_corpus.render_chat(messages)
    assert rendered.startswith("<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>")
    assert rendered.endswith("Who are you?<|role_end|><role>ASSISTANT</role>")
    assert tok.convert_ids_to_tokens(tok.encode(" 417 + 385")) == ["Ġ", "4", "1", "7", "Ġ+", "Ġ", "3", "8", "5"]
    from tokenizers import Tokenizer
    encode = tiny_corpus.PieceEncoder(Tokenizer.from_file(os.path.join(smoke_run[0], "tokenizer.json")))
    import random
    rng = random.Random(0)
    for example in tiny_corpus.training_examples(3, 300):
        for text in tiny_corpus.training_pair(example, rng):
            assert encode(text) == tok.encode(text, add_special_tokens=False), text


def test_heldout_split_is_deterministic_and_disjoint_from_training():
    train = tiny_corpus.training_examples(0, 30_000) + tiny_corpus.showcase_examples()
    train_prompts = {e.prompt for e in train}
    assert not any(tiny_corpus.is_heldout(e.family, e.a, e.b) for e in train)
    for kind in tiny_corpus.HELDOUT_KINDS + ("mixed",):
        examples = tiny_corpus.heldout_examples(kind, 150)
        assert len(examples) == 150 and examples == tiny_corpus.heldout_examples(kind, 150), kind
        assert all(tiny_corpus.is_heldout(e.family, e.a, e.b) for e in examples), kind
        assert not train_prompts & {e.prompt for e in examples}, kind
        assert tiny_corpus.heldout_questions(kind, 150) == [(e.prompt, e.answer) for e in examples]
    assert {e.family for e in tiny_corpus.heldout_examples("mixed", 7)} == {"add", "sub", "mul", "cmp", "count"}
    for a, b in ((12, 30), (30, 12)):  # the example is trained on, in the phrasing it is asked
        assert not tiny_corpus.is_heldout("add", a, b)
    assert "Solve: 12 + 30." in train_prompts
    assert tiny_corpus.is_correct(" 12 + 30 = 42. The answer is 42.", "42")
    assert not tiny_corpus.is_correct(" 12 + 30 = 42. The answer is 43.", "42")
    assert tiny_corpus.is_correct("3, 4, 5.", "3, 4, 5.") and not tiny_corpus.is_correct("3, 4.", "3, 4, 5.")


def test_training_forward_equals_inference_forward():
    model = random_model()
    n = 77
    ids, positions = torch.randint(2, 97, (n,)), torch.arange(n)
    block, ones = (positions // BLOCK)[None], torch.ones(1, n, dtype=torch.bool)
    allowed = train_tiny.visibility(torch.ones(1, n, dtype=torch.long), block, ones)
    with torch.no_grad():
        trained = train_tiny.training_forward(model, ids[None], positions[None], allowed)[0]
        served = model(ids, positions, AttentionMetadata.single(n, BLOCK))
    torch.testing.assert_close(trained, served, atol=1e-4, rtol=1e-4)


def test_packed_noisy_blocks_see_exactly_what_serving_shows():
    """Two examples packed in one row; every noisy block's hidden states equal a serving forward over that
    example's clean earlier blocks followed by the noisy block."""
    model, eos, mask = random_model(2), 0, 1
    pairs = [(list(range(10, 50)), list(range(50, 80))), (list(range(5, 17)), list(range(20, 30)))]
    row = {k: torch.from_numpy(v) for k, v in tiny_corpus.pack_rows(pairs, eos).items()}
    assert len(row["tokens"]) == 1  # clean blocks 0-1 + noisy blocks 1-2, then one noisy block: one row
    tokens, positions, doc, clean, maskable = (row[k][0].long() if row[k].dtype != torch.bool else row[k][0]
                                               for k in ("tokens", "positions", "doc", "clean", "maskable"))
    assert not maskable[clean].any() and (positions[maskable] >= 12).all()
    noisy = torch.where(maskable & (torch.rand(len(tokens), generator=torch.Generator().manual_seed(0)) < 0.5),
                        mask, tokens)
    allowed = train_tiny.visibility(doc[None], (positions // BLOCK)[None], clean[None])
    with torch.no_grad():
        hidden = train_tiny.training_forward(model, noisy[None], positions[None], allowed)[0]
        checked = 0
        for start in range(0, len(tokens), BLOCK):
            if clean[start] or doc[start] == 0:
                continue
            d, b = doc[start], int(positions[start]) // BLOCK
            prefix = tokens[(doc == d) & clean & (positions < b * BLOCK)]
            canvas = torch.cat([prefix, noisy[start:start + BLOCK]])
            served = model(canvas, torch.arange(len(canvas)), AttentionMetadata.single(len(canvas), BLOCK))
            torch.testing.assert_close(hidden[start:start + BLOCK], served[-BLOCK:], atol=1e-4, rtol=1e-4)
            checked += 1
    assert checked == 3


def test_examples_end_with_eos_filling_their_last_block():
    eos = 0
    rows = tiny_corpus.pack_rows([(list(range(3, 13)), list(range(20, 25)))], eos)
    tokens, maskable, clean = rows["tokens"][0], rows["maskable"][0], rows["clean"][0]
    assert list(tokens[:BLOCK]) == list(range(3, 13)) + list(range(20, 25)) + [eos] * (BLOCK - 15)
    assert clean[BLOCK:].all() and not clean[:BLOCK].any()  # one noisy block, then filler
    assert maskable[:BLOCK].sum() == BLOCK - 10  # response, its EOS and the EOS fill are all trained


def test_saved_checkpoint_round_trips_every_parameter(tmp_path):
    model = random_model(3)
    raw = train_tiny.model_config(train_tiny.SMOKE, 97, 0)
    train_tiny.save_checkpoint(model, raw, str(tmp_path))
    loaded = dict(load_model(str(tmp_path), dtype="float32").named_parameters())
    for name, p in model.named_parameters():
        expected = p.detach() if name.endswith("expert_bias") else p.detach().to(torch.bfloat16).float()
        assert torch.equal(loaded[name], expected), name
