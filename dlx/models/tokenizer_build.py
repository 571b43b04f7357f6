"""Builds byte-level BPE tokenizers in the LLaDA2 layout (special tokens, chat template) with `tokenizers`.
Used by the tiny-checkpoint factory and the embedded-model training script; serving only reads the files."""
import json
import os
from collections.abc import Iterable

EOS_TOKEN = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = [EOS_TOKEN, MASK_TOKEN, "<role>", "</role>", "<|role_end|>"]

# Renders <role>SYSTEM</role>…<|role_end|><role>HUMAN</role>…<|role_end|><role>ASSISTANT</role>.
CHAT_TEMPLATE = (
    "{%- set names = {'system': 'SYSTEM', 'developer': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'} -%}"
    "{%- for message in messages -%}"
    "<role>{{ names.get(message['role'], message['role'] | upper) }}</role>{{ message['content'] }}<|role_end|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<role>ASSISTANT</role>{%- endif -%}"
)


def build_tokenizer(out_dir: str, corpus: Iterable[str], vocab_size: int, model_max_length: int = 4096) -> int:
    """Train a byte-level BPE on `corpus`, write tokenizer.json + tokenizer_config.json; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "mask_token": MASK_TOKEN,
        "bos_token": None, "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "mask_token": MASK_TOKEN}, f, indent=2)
    return tok.get_vocab_size()


def token_id(model_dir: str, content: str) -> int | None:
    """Id of a special token read from tokenizer.json as plain JSON (no tokenizer library needed)."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    for added in data.get("added_tokens", []):
        if added.get("content") == content:
            return added["id"]
    return data.get("model", {}).get("vocab", {}).get(content)
