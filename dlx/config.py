"""Every setting of dlx (model, engine, server) in one dataclass, and the validation that runs once at start-up,
before any process is spawned, failing with one clear sentence (the flags that fill it: dlx/cli.py)."""
import dataclasses
import json
import os
from dataclasses import dataclass, field

from dlx.params import check_lora_flags

EMBEDDED_MODEL_DIR = os.path.join(os.path.dirname(__file__), "assets", "dlx-tiny")
# config.json model_type values dlx serves (the loader's families; a test keeps the two equal).
SERVED_MODEL_TYPES = ("llada2_moe", "diffusion_gemma")
# The decoding strategy each served model_type takes (--decoding-strategy, when given, must be its family's).
FAMILY_STRATEGIES = {"llada2_moe": "multi_bd", "diffusion_gemma": "canvas"}
# Where `launch.py --no-frontend` describes its shared memory and an attaching gunicorn looks (DLX_RUNTIME).
DEFAULT_RUNTIME_FILE = "/tmp/dlx-runtime.json"


def auto_frontend_workers() -> int:
    """Frontends parse, tokenize and stream for every request; when many requests finish in one step,
    their clients' follow-ups arrive together, and more frontends turn them around in parallel. One per
    four cores leaves the engine leader and the clients theirs: 2 on small machines, at most 8."""
    return max(2, min(8, (os.cpu_count() or 1) // 4))


class ConfigError(ValueError):
    """A bad setting; the message is one sentence meant for the person who typed the command."""


@dataclass
class Config:
    model: str | None = None
    model_name: str | None = None
    dtype: str = "auto"
    load_format: str = "auto"
    mask_token_id: int | None = None
    decoding_strategy: str | None = None   # None: the model_type's own (FAMILY_STRATEGIES)
    sampling_mode: str = "naive"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    device_ids: str = ""
    device: str | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int = 4096
    max_num_reqs: int = 128
    max_waiting_requests: int = 1024
    admission_wait_ms: float = 5.0
    block_size: int = 32
    buffer_size: int = 1
    page_size: int = 32
    denoising_steps: int = 32
    gpu_memory_utilization: float = 0.9
    num_kv_pages: int | None = None
    attn_impl: str = "triton_grouped"
    moe_impl: str = "auto"
    accept_threshold: float = 0.95
    add_block_threshold: float = 0.1
    semi_complete_threshold: float = 0.9
    edit_threshold: float = 0.9
    max_post_edit_steps: int = 16
    enforce_eager: bool = False
    disable_prefix_caching: bool = False
    disable_cuda_graphs: bool = False
    use_lora: bool = False
    lora_path: str = ""
    pre_merge_lora: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    frontend_workers: int | None = None
    engine_cpus: str = ""
    no_frontend: bool = False
    api_key: str | None = None
    max_request_bytes: int = 4 << 20
    seed: int = 0
    log_level: str = "warning"
    hf_config: dict = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)

    def finalize(self, cuda_available: bool | None = None) -> "Config":
        """Fill derived values and check every rule; raises ConfigError. Safe to call once."""
        if cuda_available is None:
            import torch
            cuda_available = torch.cuda.is_available()
        self.model = self.model or EMBEDDED_MODEL_DIR
        if not os.path.isfile(os.path.join(self.model, "config.json")):
            raise ConfigError(f"--model {self.model} is not a model directory (no config.json there)")
        with open(os.path.join(self.model, "config.json")) as f:
            self.hf_config = json.load(f)
        model_type = self.hf_config.get("model_type")
        if model_type not in SERVED_MODEL_TYPES:
            raise ConfigError(f"--model {self.model}: model_type '{model_type}' (config.json) is not served by dlx "
                              f"(served: {', '.join(SERVED_MODEL_TYPES)})")
        wanted = FAMILY_STRATEGIES[model_type]
        if self.decoding_strategy not in (None, wanted):
            raise ConfigError(f"--decoding-strategy {self.decoding_strategy} does not decode model_type "
                              f"'{model_type}' (it takes {wanted})")
        self.decoding_strategy = wanted
        if model_type == "diffusion_gemma" and (self.tensor_parallel_size > 1 or self.lora_path):
            raise ConfigError("diffusion_gemma is served without tensor parallelism and LoRA adapters so far "
                              "(--tensor-parallel-size 1, no --lora-path)")
        self.model_name = self.model_name or os.path.basename(os.path.normpath(self.model))
        self.api_key = self.api_key or os.environ.get("DLX_API_KEY") or None
        self._check_choices()
        self._choose_device(cuda_available)
        self._check_layout()
        self._check_parallelism(cuda_available)
        self._check_engine_cpus()
        return self

    def _check_choices(self) -> None:
        choices = {"sampling_mode": ("naive", "edit"),
                   "attn_impl": ("triton_grouped", "naive"),
                   "moe_impl": ("auto", "triton", "naive"), "device": (None, "cuda", "cpu"),
                   "dtype": ("auto", "bfloat16", "float16", "float32"), "load_format": ("auto", "dummy")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(a for a in allowed if a)
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {shown}, not '{getattr(self, name)}'")
        for name in ("accept_threshold", "semi_complete_threshold", "edit_threshold", "add_block_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if not 0.0 <= self.admission_wait_ms <= 1000.0:
            raise ConfigError("--admission-wait-ms must be between 0 and 1000")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError("--gpu-memory-utilization must be in (0, 1]")
        try:   # --lora-path turns adapters on; --use-lora alone needs it
            check_lora_flags(self.lora_path, self.use_lora, self.pre_merge_lora, self.model_name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _choose_device(self, cuda_available: bool) -> None:
        if self.device == "cuda" and not cuda_available:
            raise ConfigError("--device cuda was asked for but no CUDA GPU is visible")
        if self.device is None:
            self.device = "cuda" if cuda_available else "cpu"
        if self.device == "cpu" and (self.attn_impl == "triton_grouped" or self.moe_impl == "triton"):
            self.attn_impl, self.moe_impl = "naive", "naive"
            self.warnings.append("no GPU in use: serving on the CPU with the PyTorch paths "
                                 "(--attn-impl naive, --moe-impl naive, no CUDA graphs, "
                                 "--gpu-memory-utilization ignored)")
        if self.moe_impl == "auto":
            self.moe_impl = "triton" if self.attn_impl == "triton_grouped" else "naive"

    def _check_layout(self) -> None:
        if self.frontend_workers is None:
            self.frontend_workers = auto_frontend_workers()
        for name in ("block_size", "page_size", "buffer_size", "max_num_reqs", "max_num_batched_tokens",
                     "denoising_steps", "frontend_workers", "max_waiting_requests", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.page_size % self.block_size:
            raise ConfigError(f"--block-size {self.block_size} must divide --page-size {self.page_size}")
        limit = self.model_setting("max_position_embeddings", 4096)
        if self.max_model_len is None:
            self.max_model_len = min(4096, limit) // self.block_size * self.block_size
        if self.max_model_len > limit:
            self.warnings.append(f"--max-model-len {self.max_model_len} exceeds the model's max_position_embeddings; "
                                 f"using {limit // self.block_size * self.block_size}")
            self.max_model_len = limit // self.block_size * self.block_size
        if self.max_model_len % self.block_size or self.max_model_len < 2 * self.block_size:
            raise ConfigError(f"--max-model-len {self.max_model_len} must be a multiple of --block-size "
                              f"{self.block_size} and at least two blocks")
        if self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(f"--max-num-batched-tokens {self.max_num_batched_tokens} must be at least "
                              f"--max-model-len {self.max_model_len} so that any admitted prompt fits one step")
        canvas = self.hf_config.get("canvas_length", 256) if self.decoding_strategy == "canvas" else 0
        if self.max_num_batched_tokens < canvas:   # every step computes a request's whole canvas
            raise ConfigError(f"--max-num-batched-tokens {self.max_num_batched_tokens} must be at least the "
                              f"canvas length {canvas} (config.json) so that a canvas fits one step")

    def model_setting(self, name: str, default: object) -> object:
        """A config.json key, at the top level or in text_config (where DiffusionGemma keeps its text model's)."""
        value = self.hf_config.get(name)
        return value if value is not None else (self.hf_config.get("text_config") or {}).get(name, default)

    def _check_parallelism(self, cuda_available: bool) -> None:
        tp, dp = self.tensor_parallel_size, self.data_parallel_size
        if tp < 1 or dp < 1:
            raise ConfigError("--tensor-parallel-size and --data-parallel-size must be at least 1")
        heads = self.model_setting("num_attention_heads", 1)
        kv_heads = self.model_setting("num_key_value_heads", None) or heads
        if heads % tp or (kv_heads % tp and tp % kv_heads):
            raise ConfigError(f"--tensor-parallel-size {tp} must divide the {heads} attention heads and divide "
                              f"or be a multiple of the {kv_heads} KV heads")
        if self.device == "cuda":
            import torch
            visible = torch.cuda.device_count() if cuda_available else 0
            ids = self.gpu_ids(visible)
            if len(ids) < tp * dp:
                raise ConfigError(f"TP {tp} × DP {dp} needs {tp * dp} GPUs but only {len(ids)} are available")
            if any(i >= visible or i < 0 for i in ids):
                raise ConfigError(f"--device-ids {self.device_ids} names a GPU that is not visible ({visible} visible)")

    def _check_engine_cpus(self) -> None:
        cpus = self.engine_cpu_list()
        if not cpus:
            return
        allowed = os.sched_getaffinity(0)
        if len(cpus) != self.tensor_parallel_size * self.data_parallel_size or len(set(cpus)) != len(cpus):
            raise ConfigError(f"--engine-cpus {self.engine_cpus} must name one distinct CPU per engine worker "
                              f"({self.tensor_parallel_size * self.data_parallel_size})")
        if not set(cpus) <= allowed or not allowed - set(cpus):
            raise ConfigError(f"--engine-cpus {self.engine_cpus} must be CPUs this process may use "
                              f"({sorted(allowed)}) and leave at least one for the frontends")

    @property
    def bucketed_steps(self) -> bool:
        """Decode steps run padded to the graphs' buckets (on a GPU with the Triton kernels), captured or not: the
        same launch shapes either way, so --enforce-eager decodes the very tokens the graphs do."""
        return self.device == "cuda" and self.attn_impl == "triton_grouped" and self.moe_impl == "triton"

    @property
    def cuda_graphs(self) -> bool:
        """Capture the decode step's CUDA graphs: on a GPU with the Triton kernels, unless turned off."""
        return self.bucketed_steps and not self.enforce_eager and not self.disable_cuda_graphs

    def engine_cpu_list(self) -> list[int]:
        """--engine-cpus as CPU numbers in worker order ("2,3" or "2-3"); empty when not pinning."""
        cpus = []
        try:
            for part in filter(None, (p.strip() for p in self.engine_cpus.split(","))):
                first, _, last = part.partition("-")
                cpus += list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ConfigError(f"--engine-cpus must list CPUs like 2,3 or 2-3, not '{self.engine_cpus}'") from None
        return cpus

    def frontend_cpus(self) -> set[int]:
        """Where the launcher and the frontends run: every CPU but the engine workers' own (the kernel keeps
        only those the process may use). Not read from this process's affinity: under torchrun the frontend
        is spawned by a worker already pinned to one CPU."""
        return set(range(os.cpu_count() or 1)) - set(self.engine_cpu_list())

    def gpu_ids(self, visible: int) -> list[int]:
        if not self.device_ids.strip():
            return list(range(visible))
        try:
            return [int(x) for x in self.device_ids.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--device-ids must be comma-separated integers, not '{self.device_ids}'") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
