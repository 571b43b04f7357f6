"""Request parameters: the one definition of what a generation request may set, with its validation, shared
by the Python API, the HTTP schemas and the ring messages. A leaf (standard library only): everyone imports it."""
import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields

DEFAULT_MAX_TOKENS = 512
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024        # bounds the per-token cost of holding back possible stop-string prefixes
COUNT_CAP = 2**31 - 1        # larger counts mean "unbounded" anyway; capping keeps ring messages small
SAMPLING_MODES = ("naive", "edit")
_SURROGATE = re.compile("[\ud800-\udfff]")
# LoRA: linear layers of LLaDA2 an adapter may target, and what an adapter name (a request's `lora`) may be.
LINEAR_LEAVES = ("query_key_value", "dense", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class ParamError(ValueError):
    """A bad request parameter; `field` names it and the message says what it must be."""

    def __init__(self, message: str, field: str | None):
        super().__init__(message)
        self.field = field


def describe(value: object) -> str:
    """Short description of a bad value for an error message (never echoes a huge input)."""
    text = {list: "an array", tuple: "an array", dict: "an object"}.get(type(value))
    text = text or json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 24 else text[:21] + "..."


def is_int(value: object) -> bool:
    return type(value) is int   # bools are not counts


def is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def is_text(value: object) -> bool:
    # Lone surrogates (JSON may smuggle them in) are valid in no tokenizer and in no UTF-8.
    return isinstance(value, str) and not _SURROGATE.search(value)


def one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f"'{choice}'" for choice in choices)


def require(valid: bool, name: str, rule: str, value: object) -> None:
    if not valid:
        raise ParamError(f"'{name}' must be {rule}, got {describe(value)}", name)


@dataclass
class SamplingParams:
    """How one request is decoded. None means "the server's setting" (sampling_mode, threshold) or "no limit"."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    seed: int | None = None           # any int in [-2^63, 2^64), kept as its unsigned 64-bit value
    stop: list[str] = field(default_factory=list)   # matched by whoever holds the tokenizer
    stop_token_ids: list[int] = field(default_factory=list)
    max_nfe: int | None = None
    max_repetition_run: int | None = None
    ignore_eos: bool = False
    sampling_mode: str | None = None  # naive | edit
    threshold: float | None = None    # accept threshold of this request (--accept-threshold when None)
    lora: str | None = None           # run-time LoRA adapter by name (None: the unnamed adapter, if any, or none)
    # DiffusionGemma's canvas sampler (generation_config.json's names; None: the checkpoint's value). It has its own
    # temperature schedule, t_max at a canvas's first step down to t_min, in place of temperature, top_p and top_k.
    max_denoising_steps: int | None = None
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None

    def __post_init__(self):
        for name in ("max_tokens", "max_nfe", "max_repetition_run"):
            value = getattr(self, name)
            if value is not None or name == "max_tokens":
                require(is_int(value) and value >= 1, name, "an integer >= 1", value)
                setattr(self, name, min(value, COUNT_CAP))
        require(is_number(self.temperature) and self.temperature >= 0, "temperature", "a number >= 0",
                self.temperature)
        require(is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        require(is_int(self.top_k) and self.top_k >= 0, "top_k", "an integer >= 0", self.top_k)
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)
        if self.seed is not None:
            require(is_int(self.seed) and -(2**63) <= self.seed < 2**64, "seed", "an integer in [-2^63, 2^64)",
                    self.seed)
            self.seed %= 2**64   # one unsigned 64-bit range for the generator
        self.stop = self.stop_strings(self.stop)
        ids = self.stop_token_ids
        require(isinstance(ids, (list, tuple)) and all(is_int(t) and t >= 0 for t in ids), "stop_token_ids",
                "an array of token ids", ids)
        self.stop_token_ids = list(ids)
        require(isinstance(self.ignore_eos, bool), "ignore_eos", "true or false", self.ignore_eos)
        require(self.sampling_mode is None or self.sampling_mode in SAMPLING_MODES, "sampling_mode",
                one_of(SAMPLING_MODES), self.sampling_mode)
        if self.threshold is not None:
            require(is_number(self.threshold) and 0 <= self.threshold <= 1, "threshold", "a number in [0, 1]",
                    self.threshold)
            self.threshold = float(self.threshold)
        self.check_canvas_fields()
        require(self.lora is None or (is_text(self.lora) and bool(ADAPTER_NAME.match(self.lora))), "lora",
                "an adapter name", self.lora)

    def check_canvas_fields(self) -> None:
        counts = {"max_denoising_steps": 1, "stability_threshold": 0}
        for name in CANVAS_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name in counts:
                require(is_int(value) and value >= counts[name], name, f"an integer >= {counts[name]}", value)
                setattr(self, name, min(value, COUNT_CAP))
            elif name in ("t_min", "t_max"):
                require(is_number(value) and value >= 0, name, "a number >= 0", value)
                setattr(self, name, float(value))
            else:
                require(is_number(value) and value > 0, name, "a number > 0", value)
                setattr(self, name, float(value))

    def canvas_settings(self) -> dict:
        """The canvas-sampler fields this request sets (what overrides generation_config.json)."""
        return {name: getattr(self, name) for name in CANVAS_FIELDS if getattr(self, name) is not None}

    @staticmethod
    def stop_strings(value: object) -> list[str]:
        """A string or a list of strings; duplicates change nothing, so the first of each is kept."""
        strings = [value] if isinstance(value, str) else value
        require(isinstance(strings, (list, tuple)) and len(strings) <= MAX_STOP_STRINGS, "stop",
                f"a string or an array of at most {MAX_STOP_STRINGS} strings", value)
        for i, stop in enumerate(strings):
            if not (is_text(stop) and 0 < len(stop) <= MAX_STOP_CHARS):
                raise ParamError(f"'stop[{i}]' must be a non-empty string of at most {MAX_STOP_CHARS} characters, "
                                 f"got {describe(stop)}", "stop")
        return list(dict.fromkeys(strings))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def remainder(self, produced: int, nfe: int) -> "SamplingParams":
        """What is left of this request once an engine died after it had `produced` tokens (kept) and spent `nfe`
        forwards: the budgets less what was spent and, when tokens are kept, a seed derived from (seed, produced),
        so the part decoded again is reproducible without repeating the draws the kept tokens came from."""
        seed = self.seed
        if seed is not None and produced:
            digest = hashlib.blake2b(f"{seed}:{produced}".encode(), digest_size=8).digest()
            seed = int.from_bytes(digest, "little")
        max_nfe = None if self.max_nfe is None else max(1, self.max_nfe - nfe)
        return dataclasses.replace(self, max_tokens=max(1, self.max_tokens - produced), max_nfe=max_nfe, seed=seed)

    def to_dict(self) -> dict:
        """Every field, lists copied, so a ring message never aliases request state."""
        params = dict(self.__dict__)
        params["stop"], params["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return params

    @classmethod
    def from_dict(cls, values: dict) -> "SamplingParams":
        """The inverse of to_dict, validated again; an unknown key is a ParamError."""
        unknown = set(values) - FIELD_NAMES
        if unknown:
            raise ParamError(f"unknown sampling parameter '{sorted(unknown)[0]}'", sorted(unknown)[0])
        return cls(**values)


FIELD_NAMES = frozenset(f.name for f in fields(SamplingParams))
CANVAS_FIELDS = ("max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold",
                 "confidence_threshold")


@dataclass
class Resumption:
    """A request resubmitted after the engine that had it died, besides its prompt and SamplingParams.remainder():
    travels in the generate message as to_dict()."""
    generated: int = 0       # the prompt ends with this many tokens the request generated before
    spent_s: float = 0.0     # seconds since the request was first submitted (they count as queue time)
    alone: bool = False      # an engine died admitting it: admit it in a step that admits no other request

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Resumption":
        return cls(**values)


def lora_scale(config: dict) -> float:
    """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
    r, alpha = config["r"], config.get("lora_alpha", config["r"])
    return alpha / r ** 0.5 if config.get("use_rslora") else alpha / r


def parse_lora_paths(spec: str) -> list[tuple[str, str]]:
    """--lora-path: one path (an unnamed adapter, name "") or comma-separated name=path pairs."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if len(items) == 1 and "=" not in items[0]:
        return [("", items[0])]
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not ADAPTER_NAME.match(name.strip()) or not path.strip():
            raise ValueError(f"--lora-path takes one path or name=path pairs separated by commas, not '{item}'")
        pairs.append((name.strip(), path.strip()))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"--lora-path names an adapter twice ({', '.join(names)})")
    return pairs


def read_adapter_config(path: str) -> dict:
    """adapter_config.json of a PEFT LoRA adapter, checked for what dlx supports; missing files are one error."""
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        if not os.path.isfile(os.path.join(path, file)):
            raise ValueError(f"LoRA adapter {path} has no {file} (expected the PEFT layout: "
                             "adapter_config.json and adapter_model.safetensors)")
    with open(os.path.join(path, "adapter_config.json")) as f:
        config = json.load(f)
    if config.get("peft_type", "LORA").upper() != "LORA" or "r" not in config:
        raise ValueError(f"LoRA adapter {path}: adapter_config.json is not a LoRA config (peft_type, r)")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if config.get(key):
            raise ValueError(f"LoRA adapter {path}: '{key}' in adapter_config.json is not supported")
    if config.get("bias", "none") != "none" or config.get("use_dora"):
        raise ValueError(f"LoRA adapter {path}: bias training and DoRA are not supported")
    targets = config.get("target_modules") or []
    for target in [targets] if isinstance(targets, str) else targets:
        leaf = target.rsplit(".", 1)[-1]
        if isinstance(targets, list) and leaf not in LINEAR_LEAVES:
            raise ValueError(f"LoRA adapter {path} targets '{target}', which is not a linear layer of LLaDA2 "
                             f"(its linear layers: {', '.join(LINEAR_LEAVES)})")
    return config


def check_lora_flags(lora_path: str, use_lora: bool, pre_merge: bool, model_name: str | None) -> None:
    """Start-up checks of --lora-path, --use-lora and --pre-merge-lora; ValueError with one sentence."""
    if (use_lora or pre_merge) and not lora_path:
        raise ValueError(f"--{'use-lora' if use_lora else 'pre-merge-lora'} needs --lora-path")
    adapters = parse_lora_paths(lora_path) if lora_path else []
    for _, path in adapters:
        read_adapter_config(path)
    if pre_merge and len(adapters) != 1:
        raise ValueError(f"--pre-merge-lora folds one adapter into the weights; --lora-path names {len(adapters)}")
    if any(name == model_name for name, _ in adapters):
        raise ValueError(f"an adapter may not be named like the served model '{model_name}'")
