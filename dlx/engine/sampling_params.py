"""Per-request decoding settings, as the engine sees them (token ids only; stop strings are matched
by whoever holds the tokenizer and end the request through an abort)."""
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_nfe: int | None = None
    max_repetition_run: int | None = None
    ignore_eos: bool = False
    sampling_mode: str | None = None  # naive | edit; None = the engine's default

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError("temperature must be ≥ 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be ≥ 0")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be ≥ 1")
        for name in ("max_nfe", "max_repetition_run"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.sampling_mode not in (None, "naive", "edit"):
            raise ValueError("sampling_mode must be naive or edit")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
