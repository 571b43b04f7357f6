"""Tiny checkpoints carry a real tokenizer: AutoTokenizer loads it offline, specials and chat template work."""
from dlx.models.tokenizer_build import token_id


def test_special_tokens(tiny_tokenizer, tiny_dir):
    tok = tiny_tokenizer
    assert tok.eos_token == "<|endoftext|>" and tok.mask_token == "<|mask|>"
    assert token_id(tiny_dir, "<|mask|>") == tok.mask_token_id
    assert token_id(tiny_dir, "<|endoftext|>") == tok.eos_token_id
    for special in ("<role>", "</role>", "<|role_end|>", "<|mask|>"):
        assert len(tok.encode(special)) == 1


def test_round_trip_multibyte(tiny_tokenizer):
    text = "Solve: 12 + 30. Héllo 日本語 🙂"
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_chat_template_renders_llada2_roles(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Solve: 12 + 30."},
                {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 1 + 1?"}]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>Solve: 12 + 30.<|role_end|>"
                    "<role>ASSISTANT</role>42<|role_end|><role>HUMAN</role>And 1 + 1?<|role_end|>"
                    "<role>ASSISTANT</role>")
