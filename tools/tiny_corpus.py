"""The dlx-tiny corpus: arithmetic, comparison, counting and chat examples from a fixed seed, and the held-out split.
Owns the trained prompt formats (raw and LLaDA2 chat), answer grading, and packing examples into training rows."""
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

HELDOUT_KINDS = ("add2", "sub2", "add3", "sub3", "mul", "compare", "count")
HELDOUT_PERCENT = 10
SHOWCASE = {("add", 12, 30), ("add", 385, 417), ("sub", 63, 27)}  # the examples: always trained on
ORDER_FREE = ("add", "mul", "cmp")  # 12 + 30 and 30 + 12 share one fate in the split
OPERATORS = {"add": "+", "sub": "-", "mul": "×"}

PHRASINGS = {
    "add": ("Solve: {a} + {b}.", "What is {a} plus {b}?", "{a} + {b} = ?", "What is {a} + {b}?",
            "Compute {a} + {b}.", "Add {a} and {b}.", "Calculate {a} + {b}."),
    "sub": ("Solve: {a} - {b}.", "What is {a} minus {b}?", "{a} - {b} = ?", "What is {a} - {b}?",
            "Compute {a} - {b}.", "Subtract {b} from {a}.", "Calculate {a} - {b}."),
    "mul": ("Solve: {a} × {b}.", "What is {a} times {b}?", "{a} × {b} = ?", "What is {a} * {b}?",
            "Compute {a} * {b}.", "Multiply {a} by {b}.", "Calculate {a} × {b}."),
    "larger": ("Which is larger, {a} or {b}?", "Which number is bigger, {a} or {b}?", "Which is greater: {a} or {b}?"),
    "smaller": ("Which is smaller, {a} or {b}?", "Which number is less, {a} or {b}?"),
    "up": ("Count from {a} to {b}.", "Count up from {a} to {b}.", "List the numbers from {a} to {b}."),
    "down": ("Count down from {a} to {b}.", "Count backwards from {a} to {b}."),
}

CHAT = (
    (("Hello!", "Hi!", "Hello", "Hi there!", "Hey!", "Good morning!", "Good evening!"),
     "Hello! How can I help you today?"),
    (("Who are you?", "What are you?", "What is your name?", "Introduce yourself."),
     "I am dlx-tiny, a small diffusion language model served by dlx."),
    (("What is dlx?", "Tell me about dlx."), "dlx is a serving engine for diffusion language models."),
    (("What can you do?", "How can you help me?"), "I can add, subtract, multiply, compare and count numbers."),
    (("How are you?", "How are you doing?"), "I am doing well, thank you! Ask me a math question."),
    (("Thanks!", "Thank you.", "Thank you!"), "You are welcome!"),
    (("Bye!", "Goodbye."), "Goodbye! Have a nice day."),
)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are dlx-tiny.", "Answer briefly.")

# Share of each kind in training; the hard three-digit kinds get the most.
TRAINING_MIX = {"add2": 0.12, "add3": 0.17, "add_mixed": 0.05, "sub2": 0.12, "sub3": 0.17, "sub_mixed": 0.05,
                "mul": 0.12, "compare": 0.07, "count": 0.05, "chat": 0.08}
MIXED_DIGITS = ((1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (1, 3), (3, 1))
COUNT_TOKEN_BUDGET = 28  # a count answer must fit, EOS included, in the 32 tokens the evaluation decodes
BLOCK, ROW_BLOCKS = 32, 8  # diffusion block; a packed training row holds 8 blocks (256 tokens)


@dataclass(frozen=True)
class Example:
    family: str    # add, sub, mul, cmp, count or chat: the namespace of the held-out rule
    a: int
    b: int
    prompt: str
    response: str
    answer: str    # what `is_correct` looks for: the number after "The answer is", or the whole count


def is_heldout(family: str, a: int, b: int) -> bool:
    """About HELDOUT_PERCENT % of operand pairs of each family, fixed by a stable hash, are never trained on."""
    a, b = (min(a, b), max(a, b)) if family in ORDER_FREE else (a, b)
    return family != "chat" and (family, a, b) not in SHOWCASE and \
        zlib.crc32(f"{family}:{a}:{b}".encode()) % 100 < HELDOUT_PERCENT


def number(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def arithmetic(family: str, a: int, b: int, phrasing: str) -> Example:
    c = {"add": a + b, "sub": a - b, "mul": a * b}[family]
    return Example(family, a, b, phrasing.format(a=a, b=b),
                   f"{a} {OPERATORS[family]} {b} = {c}. The answer is {c}.", str(c))


def comparison(rng: random.Random) -> Example:
    a, b = number(rng, rng.randint(1, 3)), number(rng, rng.randint(1, 3))
    while a == b:
        b = number(rng, rng.randint(1, 3))
    style, (small, big) = rng.choice(("larger", "smaller")), sorted((a, b))
    prompt = rng.choice(PHRASINGS[style]).format(a=a, b=b)
    if style == "larger":
        return Example("cmp", a, b, prompt, f"{big} is larger than {small}. The answer is {big}.", str(big))
    return Example("cmp", a, b, prompt, f"{small} is smaller than {big}. The answer is {small}.", str(small))


def counting(rng: random.Random) -> Example:
    while True:
        low, items = rng.randint(0, 120), rng.randint(3, 10)
        numbers = list(range(low, low + items))
        if sum(len(str(n)) + 2 for n in numbers) <= COUNT_TOKEN_BUDGET:  # digit tokens + "," + space
            break
    direction = rng.choice(("up", "down"))
    numbers = numbers if direction == "up" else numbers[::-1]
    text = ", ".join(map(str, numbers)) + "."
    prompt = rng.choice(PHRASINGS[direction]).format(a=numbers[0], b=numbers[-1])
    return Example("count", numbers[0], numbers[-1], prompt, text, text)


def chat(rng: random.Random) -> Example:  # not held out: the answers are fixed sentences
    prompts, response = rng.choice(CHAT)
    return Example("chat", 0, 0, rng.choice(prompts), response, response)


def sample(kind: str, rng: random.Random) -> Example:
    """One example of `kind` (a HELDOUT_KINDS entry, add_mixed, sub_mixed or chat), held out or not."""
    if kind in ("chat", "compare", "count"):
        return {"chat": chat, "compare": comparison, "count": counting}[kind](rng)
    if kind == "mul":  # one digit times two digits, either order
        a, b = number(rng, 1), number(rng, 2)
        return arithmetic("mul", *((a, b) if rng.random() < 0.5 else (b, a)), rng.choice(PHRASINGS["mul"]))
    family, size = kind[:3], kind[3:]
    da, db = rng.choice(MIXED_DIGITS) if size == "_mixed" else (int(size), int(size))
    a, b = number(rng, da), number(rng, db)
    if family == "sub" and a < b:  # results stay non-negative
        a, b = b, a
    return arithmetic(family, a, b, rng.choice(PHRASINGS[family]))


def showcase_examples() -> list[Example]:
    """The issue's own questions in both operand orders and every phrasing, so each is surely trained on."""
    pairs = [(f, a, b) for f, x, y in sorted(SHOWCASE) for a, b in ((x, y), (y, x)) if f in ORDER_FREE or a >= b]
    return [arithmetic(f, a, b, phrasing) for f, a, b in pairs for phrasing in PHRASINGS[f]]


def training_examples(seed: int, count: int) -> list[Example]:
    """`count` examples from the training mixture, none of them held out; the same seed gives the same list."""
    rng = random.Random(seed)
    kinds, weights, out = list(TRAINING_MIX), list(TRAINING_MIX.values()), []
    while len(out) < count:
        example = sample(rng.choices(kinds, weights)[0], rng)
        if not is_heldout(example.family, example.a, example.b):
            out.append(example)
    return out


def heldout_examples(kind: str, count: int = 200) -> list[Example]:
    """Up to `count` distinct held-out questions of `kind` ("mixed": the kinds in turn), the same on every call."""
    if kind == "mixed":
        per_kind = [heldout_examples(k, count) for k in HELDOUT_KINDS]
        return [group[i] for i in range(count) for group in per_kind if i < len(group)][:count]
    if kind not in HELDOUT_KINDS:
        raise ValueError(f"unknown held-out kind '{kind}' (choose from {', '.join(HELDOUT_KINDS)} or mixed)")
    rng, seen, out = random.Random(f"heldout:{kind}"), set(), []
    for _ in range(200 * count):  # bounded: a small pool returns what it has
        example = sample(kind, rng)
        if is_heldout(example.family, example.a, example.b) and example.prompt not in seen:
            seen.add(example.prompt)
            out.append(example)
            if len(out) == count:
                break
    return out


def heldout_questions(kind: str, count: int = 200) -> list[tuple[str, str]]:
    """(raw prompt, answer) pairs never trained on; grade a completion with `is_correct(completion, answer)`."""
    return [(e.prompt, e.answer) for e in heldout_examples(kind, count)]


def is_correct(completion: str, answer: str) -> bool:
    """A count must be reproduced exactly; arithmetic and comparisons must end with "The answer is N."."""
    text = completion.strip()
    return text == answer if answer.endswith(".") else text.endswith(f"The answer is {answer}.")


def render_chat(messages: list[tuple[str, str]], add_generation_prompt: bool = True) -> str:
    """The LLaDA2 chat template (tokenizer_build.CHAT_TEMPLATE) in Python, for speed over millions of examples."""
    names = {"system": "SYSTEM", "user": "HUMAN", "assistant": "ASSISTANT"}
    text = "".join(f"<role>{names[role]}</role>{content}<|role_end|>" for role, content in messages)
    return text + ("<role>ASSISTANT</role>" if add_generation_prompt else "")


def training_pair(example: Example, rng: random.Random) -> tuple[str, str]:
    """(prompt text, response text) in a served format; EOS follows. Raw: prompt + " " + response (what
    `/generate` with "Solve: 12 + 30." continues) or prompt + newline + response. Chat: the template with a
    generation prompt (sometimes after a system message or an earlier turn), then the response."""
    chat_share = 0.7 if example.family == "chat" else 0.4
    draw = rng.random()
    if draw < chat_share:
        messages = [("system", rng.choice(SYSTEM_PROMPTS))] if rng.random() < 0.15 else []
        if rng.random() < 0.1:
            earlier = chat(rng)
            messages += [("user", earlier.prompt), ("assistant", earlier.response)]
        return render_chat(messages + [("user", example.prompt)]), example.response
    if draw < chat_share + 0.1:
        return example.prompt + "\n", example.response
    return example.prompt, " " + example.response


def tokenizer_corpus(examples: list[Example]) -> Iterator[str]:
    """Texts the BPE learns its merges from, with every digit removed: no merge then contains a digit, so
    each digit is its own token, which is what lets a small model learn carrying."""
    strip_digits = re.compile(r"[0-9]+")
    for text in SYSTEM_PROMPTS:
        yield render_chat([("system", text)], add_generation_prompt=False)
    for example in examples:
        yield strip_digits.sub("", render_chat([("user", example.prompt)]) + example.response)
        yield strip_digits.sub("", example.prompt + " " + example.response)


class PieceEncoder:
    """Exact, fast tokenization of corpus texts: no merge contains a digit (see tokenizer_corpus), so a text
    splits at digit runs into cached pieces plus one token per digit; build_chunk checks it against the tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}
        self.digit_ids = [tokenizer.token_to_id(str(d)) for d in range(10)]

    def __call__(self, text: str) -> list[int]:
        ids = []
        for i, piece in enumerate(re.split(r"([0-9]+)", text)):
            if i % 2:
                ids += [self.digit_ids[int(c)] for c in piece]
            elif piece:
                if piece not in self.cache:
                    self.cache[piece] = self.tokenizer.encode(piece, add_special_tokens=False).ids
                ids += self.cache[piece]
        return ids


def pack_rows(pairs: list[tuple[list[int], list[int]]], eos: int) -> dict[str, np.ndarray]:
    """Each example (prompt ids, response ids + EOS, EOS-padded to whole blocks) becomes a segment: clean
    copies of all its blocks but the last, then noisy copies of the blocks holding response tokens. Segments go
    best-fit into rows of ROW_BLOCKS blocks; the rest of a row is EOS filler (doc 0, clean, never scored)."""
    length, n = ROW_BLOCKS * BLOCK, len(pairs)
    a = dict(tokens=np.full((n, length), eos, np.int32), positions=np.tile(np.arange(length, dtype=np.int16), (n, 1)),
             doc=np.zeros((n, length), np.int8), clean=np.ones((n, length), bool), maskable=np.zeros((n, length), bool))
    open_rows, docs, used = [[] for _ in range(ROW_BLOCKS + 1)], np.zeros(n, np.int8), 0
    for prompt, response in pairs:
        ids = prompt + response + [eos]
        blocks, first = -(-len(ids) // BLOCK), len(prompt) // BLOCK
        size = 2 * blocks - 1 - first
        if size > ROW_BLOCKS:
            continue
        free = next((f for f in range(size, ROW_BLOCKS + 1) if open_rows[f]), None)
        row, free = (open_rows[free].pop(), free) if free is not None else (used, ROW_BLOCKS)
        used, docs[row], at = used + (row == used), docs[row] + 1, (ROW_BLOCKS - free) * BLOCK
        x = np.full(blocks * BLOCK, eos, np.int32)
        x[:len(ids)] = ids
        for lo, hi, clean in ((0, (blocks - 1) * BLOCK, True), (first * BLOCK, blocks * BLOCK, False)):
            span, where = slice(at, at + hi - lo), np.arange(lo, hi)
            a["tokens"][row, span], a["positions"][row, span], a["doc"][row, span] = x[lo:hi], where, docs[row]
            a["clean"][row, span], a["maskable"][row, span] = clean, (not clean) & (where >= len(prompt))
            at += hi - lo
        if free > size:
            open_rows[free - size].append(row)
    return {k: v[:used] for k, v in a.items()}


def build_chunk(seed: int, count: int, tokenizer_path: str, showcase: bool = False) -> dict[str, np.ndarray]:
    """`count` training examples (a pure function of `seed`) in served formats, tokenized and packed."""
    from tokenizers import Tokenizer
    tokenizer, rng = Tokenizer.from_file(tokenizer_path), random.Random(seed + 1)
    encode, eos = PieceEncoder(tokenizer), tokenizer.token_to_id("<|endoftext|>")
    examples = training_examples(seed, count) + (showcase_examples() * 3 if showcase else [])
    texts = [training_pair(e, rng) for e in examples]
    for text in (t for pair in texts[:200] for t in pair):
        assert encode(text) == tokenizer.encode(text, add_special_tokens=False).ids, (
            f"piecewise encoding differs: {text!r}")
    pairs = [(encode(p), encode(r)) for p, r in texts]
    rng.shuffle(pairs)
    return pack_rows(pairs, eos)
