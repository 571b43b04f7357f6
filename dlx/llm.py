"""Python API: `LLM(model_dir, **engine_args).generate(prompts, params)` and `.stream(prompt, params)`.
Runs the engine in this process; owns the tokenizer, chat rendering and stop strings."""
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

from dlx.config import Config
from dlx.engine.engine import LLMEngine, StepOutput
from dlx.params import SamplingParams


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    nfe: int
    finish_reason: str
    prompt_token_ids: list[int]


@dataclass
class StreamEvent:
    """One engine step of one request: the denoising buffer (masks shown) and its stable text."""
    token_ids: list[int]
    text: str                 # the whole buffer, masks rendered as the tokenizer's mask token
    stable_text: str
    nfe: int
    finished: bool
    completion: Completion | None = None


class LLM:
    def __init__(self, model: str | None = None, **engine_args):
        from transformers import AutoTokenizer
        self.config = Config(model=model, **engine_args).finalize()
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.model)
        self.engine = LLMEngine(self.config)

    def encode(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens=False)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def generate(self, prompts: str | list, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[Completion]:
        """All prompts decoded together (continuous batching); results in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        reqs = [self.engine.add_request(self.encode(p), sp) for p, sp in zip(prompts, params)]
        results: dict[str, Completion] = {}
        with tqdm(total=len(reqs), desc="generating", disable=not use_tqdm or len(reqs) < 2) as bar:
            while len(results) < len(reqs):
                for out in self.engine.step():
                    done = self.settle(out, reqs_by_id={r.rid: r for r in reqs})
                    if done is not None:
                        results[out.rid] = done
                        bar.update(1)
        return [results[r.rid] for r in reqs]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[StreamEvent]:
        """Yields after every engine step this request took part in; the last event has the completion."""
        req = self.engine.add_request(self.encode(prompt), params or SamplingParams())
        try:
            while True:
                for out in self.engine.step():
                    if out.rid != req.rid:
                        continue
                    done = self.settle(out, {req.rid: req})
                    yield self.event(out, done)
                    if done is not None:
                        return
        finally:
            if not self.engine.is_finished(req):
                self.engine.abort(req.rid)

    def settle(self, out: StepOutput, reqs_by_id: dict) -> Completion | None:
        """Completion once the request is finished, or once a stop string shows up in its stable text."""
        req = reqs_by_id.get(out.rid)
        if req is None:
            return None
        stable = out.output if out.finished else out.token_ids[:out.stable_len]
        text = self.tokenizer.decode(stable, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in req.params.stop) if i >= 0]
        if hits:
            if not out.finished:
                self.engine.abort(req.rid)
            cut = min(hits)
            keep = len(stable)
            while keep and len(self.tokenizer.decode(stable[:keep], skip_special_tokens=True)) > cut:
                keep -= 1
            return Completion(text[:cut], stable[:keep], out.nfe, "stop", req.tokens[:req.prompt_len])
        if out.finished:
            return Completion(text, list(out.output), out.nfe, out.finish_reason, req.tokens[:req.prompt_len])
        return None

    def event(self, out: StepOutput, done: Completion | None) -> StreamEvent:
        mask = self.tokenizer.mask_token or "<|mask|>"
        pieces, run = [], []
        for t in out.token_ids:
            if t == self.engine.mask_id:
                pieces += [self.tokenizer.decode(run, skip_special_tokens=True), mask]
                run = []
            else:
                run.append(t)
        pieces.append(self.tokenizer.decode(run, skip_special_tokens=True))
        stable = self.tokenizer.decode(out.token_ids[:out.stable_len], skip_special_tokens=True)
        return StreamEvent(out.token_ids, "".join(pieces), done.text if done else stable, out.nfe,
                           done is not None, done)
