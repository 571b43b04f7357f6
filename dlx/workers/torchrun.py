"""Running under `torchrun --nproc-per-node N launch.py …`: each torchrun process is one worker; rank 0 also
owns the shared memory and spawns the HTTP side (no fork after CUDA starts); torchrun restarts, no supervisor."""
import os
import signal
from collections.abc import Callable

import torch.distributed as dist
import torch.multiprocessing as mp

from dlx.config import Config
from dlx.workers.worker import CONTROL_TIMEOUT, serve, use_device


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= os.environ.keys()


def run(cfg: Config, make_runtime: Callable, start_frontend: Callable) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    tp, dp = cfg.tensor_parallel_size, cfg.data_parallel_size
    if world != tp * dp:
        if rank == 0:
            print(f"dlx: error: torchrun started {world} processes but TP {tp} × DP {dp} needs {tp * dp}", flush=True)
        return 2
    use_device(cfg, int(os.environ.get("LOCAL_RANK", rank)))
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    dist.init_process_group(backend)
    everyone = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    tp_groups = [dist.new_group(list(range(g * tp, (g + 1) * tp))) for g in range(dp)]
    controls = [dist.new_group(list(range(g * tp, (g + 1) * tp)), backend="gloo", timeout=CONTROL_TIMEOUT)
                for g in range(dp)] if backend == "nccl" else tp_groups
    runtime = make_runtime(cfg) if rank == 0 else None
    box = [runtime.prefix if runtime else None]
    dist.broadcast_object_list(box, src=0, group=everyone)
    frontend = None
    if rank == 0:
        runtime.board.write(0, {"state": "ready", "generation": 1, "stop": False})
        frontend = mp.get_context("spawn").Process(target=start_frontend, args=(cfg, runtime.data), name="dlx-http")
        frontend.start()
        stop = lambda *_: runtime.board.write(0, {"state": "stopping", "generation": 1, "stop": True})  # noqa: E731
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # rank 0 decides when everyone stops
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    group = rank // tp
    try:
        serve(cfg, rank % tp, group, tp_groups[group] if tp > 1 else None, controls[group] if tp > 1 else None,
              box[0], generation=1)
    finally:
        if frontend is not None:
            frontend.terminate()
            frontend.join(30)
            runtime.cleanup()
        dist.destroy_process_group()
    return 0
