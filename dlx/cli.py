"""The command line of launch.py: one flag per Config field (its help text here), and the Config those flags give.
Validation stays in Config.finalize(); this module only maps flags to fields."""
import argparse
import dataclasses

from dlx.config import Config


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; names, defaults and types come from the dataclass."""
    helps = {
        "model": "local checkpoint directory (default: the embedded dlx-tiny model)",
        "model_name": "served model id (the seed's registered names, e.g. llada2_mini, are accepted)",
        "load_format": "auto (the checkpoint's safetensors) or dummy (random weights for a directory holding only "
                       "config.json and tokenizer files, for benchmarks; routers balanced like a trained model's)",
        "decoding_strategy": "multi_bd (block diffusion: llada2_moe) or canvas (DiffusionGemma's canvas sampler: "
                             "diffusion_gemma); default: the one config.json's model_type takes",
        "buffer_size": "blocks decoded concurrently per request (1 = SingleBD, exactly the model's generate())",
        "attn_impl": "triton_grouped (GPU: Triton attention, KV store, norms, rotary, greedy sampling "
                     "reduction) or naive (plain PyTorch)",
        "moe_impl": "triton (fused MoE kernels) or naive (per-expert PyTorch loop); auto follows --attn-impl",
        "device": "cuda or cpu (default: cuda when available)",
        "num_kv_pages": "KV-cache pages (default: on a GPU sized from --gpu-memory-utilization; on the CPU enough for "
                        "--max-num-reqs requests of --max-model-len tokens, at most 1 GiB)",
        "admission_wait_ms": "after a step that finished requests, wait up to this long (and a quarter of the "
                             "step) for follow-up requests to join the next step, when they would be a quarter "
                             "of the batch and while such waits keep catching arrivals; 0 disables",
        "engine_cpus": "pin each engine worker to its own CPU, e.g. 2,3 or 2-3 (one per worker; the launcher "
                       "and frontends keep the others): a Python-bound step then never shares its core",
        "enforce_eager": "no CUDA graphs: each step's kernels launched from Python, same shapes and tokens "
                         "(same as --disable-cuda-graphs)",
        "disable_cuda_graphs": "no CUDA graphs (same as --enforce-eager)",
        "no_frontend": "start only the engine workers; attach gunicorn frontends separately",
        "frontend_workers": "gunicorn gevent frontend processes (default: one per 4 CPU cores, 2 to 8)",
        "api_key": "require 'Authorization: Bearer KEY' (also DLX_API_KEY)",
        "lora_path": "PEFT LoRA adapters: one directory (for every request) or name=dir pairs, comma-separated",
        "log_level": "gunicorn's log level (debug, info, warning, error, critical); below warning it also "
                     "logs its start-up, workers and shutdown",
    }
    for f in dataclasses.fields(Config):
        if f.name in ("hf_config", "warnings"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=helps.get(f.name))
            continue
        declared = str(f.type)   # e.g. "int", "float", "str | None", "int | None"
        kind = float if "float" in declared else int if "int" in declared and "str" not in declared else str
        parser.add_argument(flag, type=kind, default=f.default, help=helps.get(f.name))


def config_from_args(args: argparse.Namespace) -> Config:
    names = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in vars(args).items() if k in names})
