"""LLMEngine: the step loop that ties scheduler → runner → sampler → postprocess together, plus request
intake, aborts, per-step outputs (snapshots for streaming) and metrics. Token ids only, no tokenizer."""
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dlx.config import Config
from dlx.engine.canvas_diffusion import CanvasSampler
from dlx.engine.canvas_runner import CanvasRunner
from dlx.engine.kv_manager import KVCacheManager
from dlx.engine.request import Request, Status
from dlx.engine.runner import ModelRunner
from dlx.engine.sampler import Sampler
from dlx.engine.scheduler import Scheduler
from dlx.engine.strategy import strategy_for
from dlx.models import load_model
from dlx.models.lora_layers import serve_adapters
from dlx.models.tokenizer_build import EOS_TOKEN, MASK_TOKEN, token_id
from dlx.params import Resumption, SamplingParams


@dataclass
class StepOutput:
    """What a stream needs after a step: the activated region with masks, how much of it is final."""
    rid: str
    token_ids: list[int]          # generated region so far (masks at undecoded positions)
    stable_len: int               # leading tokens that will not change
    nfe: int
    finished: bool
    finish_reason: str | None = None
    output: list[int] | None = None
    timing: dict | None = None    # queue and prefill times on a request's first output, all of them when finished


@dataclass
class StepMetrics:
    tokens_committed: int = 0
    num_requests: int = 0
    step_seconds: float = 0.0
    running: int = 0
    waiting: int = 0
    kv_pages_used: int = 0
    kv_pages_free: int = 0
    kv_pages_cached: int = 0
    per_request_tokens: list[int] = field(default_factory=list)


def special_ids(cfg: Config) -> tuple[int, int | None]:
    mask = cfg.mask_token_id if cfg.mask_token_id is not None else cfg.hf_config.get("mask_token_id")
    mask = mask if mask is not None else token_id(cfg.model, MASK_TOKEN)
    if mask is None and cfg.decoding_strategy == "canvas":
        # A canvas has no mask token and never shows an undecided position: any real id fills the request's tail.
        mask = cfg.model_setting("pad_token_id", 0)
    if mask is None:
        raise ValueError(f"no mask token found for {cfg.model}: pass --mask-token-id")
    eos = cfg.hf_config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    return mask, eos if eos is not None else token_id(cfg.model, EOS_TOKEN)


class LLMEngine:
    def __init__(self, cfg: Config, model: torch.nn.Module | None = None):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.model = model or load_model(cfg.model, cfg.dtype, cfg.device, cfg.load_format)
        self.adapters = serve_adapters(self.model, cfg.lora_path, cfg.pre_merge_lora)   # name → row index
        self.mask_id, self.eos_id = special_ids(cfg)
        self.vocab_size = self.model.config.vocab_size
        self.facts: list[str] = []    # start-up facts the launcher prints (graphs captured, their memory)
        self.strategy = strategy_for(cfg)
        if self.strategy.paged_kv:
            num_pages = self.start_paged_runner()
            self.sampler: Sampler | CanvasSampler = Sampler(self.mask_id)
        else:   # a dense family: its own runner and sampler, and a page pool the scheduler never draws from
            num_pages, self.runner, self.sampler = 1, CanvasRunner(self.model), CanvasSampler()
        self.kv = KVCacheManager(num_pages, cfg.page_size, not cfg.disable_prefix_caching)
        self.scheduler = Scheduler(self.kv, cfg.max_num_reqs, cfg.max_num_batched_tokens, self.strategy)
        self.last_metrics = StepMetrics()
        self.last_finished: dict[str, Request] = {}   # requests that finished in the latest step

    def start_paged_runner(self) -> int:
        """The ModelRunner over a paged KV cache sized for the configuration, its graphs captured when they are on;
        returns the number of pages."""
        cfg = self.cfg
        num_pages = cfg.num_kv_pages or self.default_num_pages()
        if num_pages * cfg.page_size < cfg.max_model_len + cfg.page_size:
            raise ValueError(f"{num_pages} KV pages cannot hold one request of --max-model-len {cfg.max_model_len}")
        self.runner: ModelRunner | CanvasRunner = self.make_runner(num_pages)
        if cfg.cuda_graphs:
            self.capture_graphs()
        elif cfg.bucketed_steps:   # --enforce-eager: the graphs' shapes, uncaptured
            self.runner.use_graphs(cfg.max_num_reqs, cfg.buffer_size, cfg.max_model_len, capture=False)
        return num_pages

    def capture_graphs(self) -> None:
        """Capture the decode step's graphs; a capture that fails leaves the engine serving eagerly, and says so."""
        cfg, before = self.cfg, torch.cuda.memory_reserved()
        try:
            count, seconds = self.runner.use_graphs(cfg.max_num_reqs, cfg.buffer_size, cfg.max_model_len)
        except Exception as exc:   # noqa: BLE001 (any capture error: eager steps still serve)
            self.runner.graphs = None
            self.facts.append(f"warning: CUDA graph capture failed, serving eagerly ({type(exc).__name__}: {exc})")
            return
        used = (torch.cuda.memory_reserved() - before) / 2**30
        self.facts.append(f"CUDA graphs: {count} captured in {seconds:.1f} s, {used:.2f} GiB "
                          "(--enforce-eager turns them off)")

    def make_runner(self, num_pages: int) -> ModelRunner:
        """A runner whose buffers hold any step: the token budget in rows, every request's pages, and the logit
        rows of max_num_reqs requests with buffer_size open blocks each."""
        cfg = self.cfg
        pages = -(-(cfg.max_model_len + cfg.block_size) // cfg.page_size)
        logit_rows = cfg.max_num_reqs * cfg.block_size * cfg.buffer_size
        limits = (cfg.max_num_batched_tokens, cfg.max_num_reqs, pages, logit_rows)
        return ModelRunner(self.model, cfg.block_size, cfg.page_size, num_pages, self.mask_id, limits, cfg.attn_impl,
                           cfg.moe_impl)

    def default_num_pages(self) -> int:
        page_bytes = self.model.kv_layout().page_bytes(self.cfg.page_size)
        if self.cfg.device == "cuda":
            reserve = self.graph_memory() if self.cfg.bucketed_steps else 0
            free, _ = torch.cuda.mem_get_info()
            total = torch.cuda.get_device_properties(0).total_memory
            budget = free - total * (1 - self.cfg.gpu_memory_utilization) - reserve
            return max(1, int(budget // page_bytes))
        wanted = self.cfg.max_num_reqs * -(-self.cfg.max_model_len // self.cfg.page_size) + 1
        return max(2, min(wanted, (1 << 30) // page_bytes))

    def graph_memory(self) -> int:
        """Bytes the CUDA graphs will hold beside the KV cache: the peak of one eager run of the largest body and
        head buckets on a two-page scratch cache (their pool holds the largest graph's activations), buffers
        included."""
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        scratch = self.make_runner(2)
        scratch.use_graphs(self.cfg.max_num_reqs, self.cfg.buffer_size, self.cfg.max_model_len, capture=False)
        scratch.graphs.run_largest()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del scratch
        torch.cuda.empty_cache()
        return peak

    def add_request(self, prompt: list[int], params: SamplingParams, rid: str | None = None,
                    resumption: Resumption | None = None) -> Request:
        """`resumption`: the request was resubmitted after the engine that had it died."""
        if not prompt:
            raise ValueError("prompt is empty")
        if resumption and not 0 <= resumption.generated < len(prompt):
            raise ValueError(f"a resumed request keeps between 0 and {len(prompt) - 1} generated tokens")
        if len(prompt) >= self.cfg.max_model_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; --max-model-len {self.cfg.max_model_len} "
                             "leaves no room to generate")
        if min(prompt) < 0 or max(prompt) >= self.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size})")
        self.strategy.check_params(params)
        adapter = self.adapters.get(params.lora if params.lora is not None else "", -1)
        if params.lora is not None and params.lora not in self.adapters:
            raise ValueError(f"unknown LoRA adapter '{params.lora}' (served: {', '.join(self.adapters) or 'none'})")
        req = Request(prompt, params, self.cfg.block_size, self.cfg.max_model_len, self.mask_id, self.eos_id,
                      self.cfg.denoising_steps, rid, resumption)
        req.adapter = adapter
        self.scheduler.add(req)
        return req

    def abort(self, rid: str) -> Request | None:
        return self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self, on_scheduled: Callable[[], None] | None = None) -> list[StepOutput]:
        """One forward for the scheduled batch and its commits. on_scheduled runs once the batch is chosen,
        before the forward (the leader publishes the running count there)."""
        started, started_at = time.perf_counter(), time.monotonic()
        batch = self.scheduler.schedule()
        if not batch:
            return []
        if on_scheduled is not None:
            on_scheduled()
        positions = [self.strategy.logit_positions(req) for req in batch]
        logits = self.runner.run(batch, self.scheduler.plans, positions)
        chosen = self.sampler.choose(batch, logits, [len(p) for p in positions])
        committed = [self.strategy.commit(req, pos, *choice) for req, pos, choice in zip(batch, positions, chosen)]
        first = [req.first_step_done is None for req in batch]
        now = time.monotonic()
        for req in batch:   # stamped before postprocess, so a request finished by this step ends after it
            req.first_scheduled = req.first_scheduled or started_at
            req.first_step_done = req.first_step_done or now
        self.last_finished = {r.rid: r for r in self.scheduler.postprocess(batch)}
        outputs = [self.snapshot(req, req.rid in self.last_finished, is_first) for req, is_first in zip(batch, first)]
        self.record_metrics(batch, committed, time.perf_counter() - started)
        return outputs

    def snapshot(self, req: Request, finished: bool, first: bool = False) -> StepOutput:
        if finished:
            return StepOutput(req.rid, list(req.output), len(req.output), req.nfe, True, req.finish_reason, req.output,
                              req.timing())
        return StepOutput(req.rid, self.strategy.shown_tokens(req), self.strategy.stable_len(req), req.nfe, False,
                          timing=req.start_timing() if first else None)

    def record_metrics(self, batch: list[Request], committed: list[int], seconds: float) -> None:
        self.last_metrics = StepMetrics(
            tokens_committed=sum(committed), num_requests=len(batch), step_seconds=seconds,
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            kv_pages_used=self.kv.num_used, kv_pages_free=self.kv.num_free, kv_pages_cached=self.kv.num_cached,
            per_request_tokens=committed)

    def is_finished(self, req: Request) -> bool:
        return req.status == Status.FINISHED
