"""Tests for dlx.frontend.detokenizer against a small byte-level BPE trained in the fixture.
Checks incremental text equals a full decode, no partial UTF-8 is ever emitted, snapshots and stop strings."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dlx.frontend.detokenizer import IncrementalDetokenizer, find_stop, render_snapshot, safe_prefix_len

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Solve: 12 + 30. The answer is 42.",
    "A café serves crème brûlée and a cold drink.",
    "日本語のテキストを少し書きます。日本語は楽しい。",
    "I like this a lot 🙂 and so do you 🙂",
    "Diffusion models denoise masked positions block by block.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "Hello, world! Hello there, general Kenobi.",
    "She said: \"it's fine\" -- and left.",
] * 3
# Characters the corpus never shows, so the BPE must spell them out of byte tokens.
MULTIBYTE_TEXTS = [
    "naïve façade über 中文 🎉🎉 done",
    "é日本語🙂 mixed with ascii and 🧪 emoji",
    "Ω≈ç√∫˜µ≤≥÷ … ‽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


@pytest.fixture(scope="module")
def tokenizer():
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|mask|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", mask_token="<|mask|>")


def stream(tokenizer, ids, chunk_sizes=None, skip_special_tokens=True):
    """Push `ids` through a detokenizer in chunks; return the list of deltas (flush included)."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas, end = [], 0
    for size in chunk_sizes or [1] * len(ids):
        end = min(end + size, len(ids))
        deltas.append(detokenizer.push(ids[:end]))
    deltas.append(detokenizer.push(ids))
    deltas.append(detokenizer.flush())
    return deltas


def test_multibyte_characters_really_are_split_across_tokens(tokenizer):
    for text in MULTIBYTE_TEXTS:
        ids = tokenizer.encode(text)
        assert any("\ufffd" in tokenizer.decode([token]) for token in ids)


@pytest.mark.parametrize("text", CORPUS[:10] + MULTIBYTE_TEXTS)
def test_one_token_at_a_time_equals_full_decode_without_partial_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    deltas = stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_text_before_an_incomplete_character_is_emitted(tokenizer):
    ids = tokenizer.encode("ab 🎉")
    detokenizer = IncrementalDetokenizer(tokenizer)
    cut = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    first = detokenizer.push(ids[:cut])
    assert first == "ab "
    assert first + detokenizer.push(ids) + detokenizer.flush() == "ab 🎉"


def test_flush_returns_an_incomplete_tail(tokenizer):
    ids = tokenizer.encode("x🎉")
    partial = ids[:-1]
    assert tokenizer.decode(partial).endswith("\ufffd")
    detokenizer = IncrementalDetokenizer(tokenizer)
    held = detokenizer.push(partial)
    assert "\ufffd" not in held
    assert held + detokenizer.flush() == tokenizer.decode(partial)
    assert detokenizer.flush() == ""


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_random_ids_in_random_chunks_equal_full_decode(tokenizer, skip_special_tokens):
    rng = random.Random(1234)
    vocab = len(tokenizer)
    for _ in range(150):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        chunks = [rng.randrange(1, 6) for _ in range(len(ids))]
        deltas = stream(tokenizer, ids, chunks, skip_special_tokens)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        # Only the flush may carry a trailing replacement char (bytes that never completed).
        assert not any(delta.endswith("\ufffd") for delta in deltas[:-1])


def test_special_tokens_are_skipped_or_kept(tokenizer):
    ids = tokenizer.encode("Hello world") + [tokenizer.eos_token_id] + tokenizer.encode(" again")
    assert "".join(stream(tokenizer, ids)) == "Hello world again"
    assert "".join(stream(tokenizer, ids, skip_special_tokens=False)) == "Hello world<|endoftext|> again"


class CountingTokenizer:
    """Records how many ids each decode call sees, to prove the detokenizer re-decodes a short window."""

    def __init__(self, tokenizer):
        self.tokenizer, self.window_sizes = tokenizer, []

    def decode(self, ids, **kwargs):
        self.window_sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_decode_window_stays_small(tokenizer):
    ids = tokenizer.encode(" ".join(CORPUS))
    assert len(ids) > 300
    counting = CountingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(counting)
    text = "".join(detokenizer.push(ids[:end]) for end in range(1, len(ids) + 1)) + detokenizer.flush()
    assert text == tokenizer.decode(ids)
    assert max(counting.window_sizes) <= 8
    assert len(counting.window_sizes) <= 2 * len(ids) + 2


def test_push_must_not_shrink(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer)
    detokenizer.push([10, 11, 12])
    with pytest.raises(ValueError):
        detokenizer.push([10])


def test_empty_push_and_repeat_push_emit_nothing(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push([]) == ""
    ids = tokenizer.encode("same text")
    assert detokenizer.push(ids) == "same text"
    assert detokenizer.push(ids) == "" and detokenizer.flush() == ""


def test_render_snapshot_shows_masks(tokenizer):
    mask = tokenizer.mask_token_id
    left, right = tokenizer.encode("12 + 30"), tokenizer.encode(" = 42.")
    ids = left + [mask, mask] + right + [mask]
    assert render_snapshot(tokenizer, ids, mask, "<|mask|>") == "12 + 30<|mask|><|mask|> = 42.<|mask|>"
    assert render_snapshot(tokenizer, ids, mask, "▨") == "12 + 30▨▨ = 42.▨"
    assert render_snapshot(tokenizer, [mask] * 3, mask, "_") == "___"
    assert render_snapshot(tokenizer, left, mask, "_") == "12 + 30"
    assert render_snapshot(tokenizer, [], mask, "_") == ""
    eos = tokenizer.eos_token_id
    assert render_snapshot(tokenizer, right + [eos, mask], mask, "_") == " = 42._"
    assert render_snapshot(tokenizer, right + [eos], mask, "_", skip_special_tokens=False) == " = 42.<|endoftext|>"


def test_find_stop():
    assert find_stop("hello world", [], 0) is None
    assert find_stop("hello world", ["xyz"], 0) is None
    assert find_stop("hello world", ["world"], 0) == 6
    assert find_stop("hello world", ["o", "world"], 0) == 4  # earliest occurrence wins
    # "wor" came in an earlier push, "ld" is new: the match straddles the boundary.
    assert find_stop("hello world", ["world"], 9) == 6
    # A match that ended before the new text was already checked and is not searched again.
    assert find_stop("stop here, then more", ["stop"], 15) is None


def test_safe_prefix_len():
    assert safe_prefix_len("hello wor", ["world"]) == 6
    assert safe_prefix_len("hello w", ["world", "xx"]) == 6
    assert safe_prefix_len("hello", ["world"]) == 5
    assert safe_prefix_len("hello", []) == 5
    assert safe_prefix_len("aaa", ["aab"]) == 1  # "aa" could still become "aab"
    assert safe_prefix_len("ab<|e", ["<|end|>", "b<"]) == 2
    assert safe_prefix_len("", ["x"]) == 0


def test_stop_string_straddling_pushes(tokenizer):
    """The streaming loop the app runs: cut at a stop string that arrives across several pushes."""
    text = "The answer is 42. ### Next question: what is 7?"
    ids, stops = tokenizer.encode(text), ["###", "never"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    full, sent, stopped = "", "", False
    for end in range(1, len(ids) + 1):
        delta = detokenizer.push(ids[:end])
        start, full = len(full), full + delta
        cut = find_stop(full, stops, start)
        if cut is not None:
            sent += full[len(sent):cut]
            stopped = True
            break
        sent += full[len(sent):safe_prefix_len(full, stops)]
        assert not sent.endswith("#")  # never leaks the start of the stop string
    assert stopped and sent == "The answer is 42. "
