"""One worker process: joins its data-parallel group's torch.distributed world (gloo on CPU, NCCL on GPU),
loads its tensor-parallel shard, then leads (rank 0) or follows the leader's commands step by step."""
import datetime
import signal
import threading

import torch
import torch.distributed as dist
from tqdm import tqdm

from dlx.config import Config
from dlx.engine.engine import LLMEngine
from dlx.ipc import ChannelSet
from dlx.ipc.board import StatusBoard
from dlx.models.parallel import set_tensor_parallel
from dlx.workers.affinity import pin_process
from dlx.workers.leader import Leader, apply_commands

# Idle followers block in a gloo broadcast until the leader has work; that wait must never time out.
CONTROL_TIMEOUT = datetime.timedelta(days=365)


def leader_slot(group: int) -> int:
    """Board slot of data-parallel group `group`'s leader (slot 0 is the launcher's control record)."""
    return 1 + group


def channel_prefix(prefix: str, group: int) -> str:
    return f"{prefix}dp{group}"


def use_device(cfg: Config, global_rank: int) -> None:
    """This worker's GPU, and its CPU: its own core with --engine-cpus, else a share of torch's threads."""
    cpus = cfg.engine_cpu_list()
    if cpus:
        pin_process({cpus[global_rank]})
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(max(1, torch.get_num_threads() // (cfg.tensor_parallel_size * cfg.data_parallel_size)))
    if cfg.device == "cuda":
        torch.cuda.set_device(cfg.gpu_ids(torch.cuda.device_count())[global_rank])


def worker_main(tp_rank: int, group: int, cfg_dict: dict, prefix: str, port: int, generation: int) -> None:
    """Entry point of a pool process: its own world of the group's tensor-parallel ranks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the launcher decides when workers stop
    # tqdm's default lock is a multiprocessing RLock: under spawn a named semaphore in /dev/shm that a killed
    # worker would leave behind. The loading bar is this process's own, so a thread lock serves.
    tqdm.set_lock(threading.RLock())
    cfg = Config(**cfg_dict)
    tp = cfg.tensor_parallel_size
    use_device(cfg, group * tp + tp_rank)
    tp_group = control = None
    if tp > 1:
        backend = "nccl" if cfg.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=tp_rank, world_size=tp)
        tp_group = dist.group.WORLD
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT) if backend == "nccl" else tp_group
    try:
        serve(cfg, tp_rank, group, tp_group, control, prefix, generation)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def serve(cfg: Config, tp_rank: int, group: int, tp_group, control, prefix: str, generation: int) -> None:
    """Load this rank's shard, then lead the group (tp rank 0) or mirror its leader."""
    if tp_group is not None:
        set_tensor_parallel(tp_group, tp_rank, cfg.tensor_parallel_size)
    engine = LLMEngine(cfg)
    if tp_rank == 0 and group == 0:
        for fact in engine.facts:
            print(f"dlx: {fact}", flush=True)
    if tp_rank != 0:
        follow(engine, control, dist.get_global_rank(control, 0))
        return
    board = StatusBoard.attach(prefix)
    channels = ChannelSet.attach(channel_prefix(prefix, group))
    sync = None
    if tp_group is not None:
        source = dist.get_global_rank(control, 0)
        sync = lambda commands: dist.broadcast_object_list([commands], src=source, group=control)  # noqa: E731
    try:
        Leader(engine, channels, board, leader_slot(group), generation, sync).run()
    finally:
        channels.close()
        board.close()


def follow(engine: LLMEngine, control, source: int) -> None:
    """Mirror the leader: same commands, same steps, so every collective inside the model lines up."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=source, group=control)
        if box[0] is None:
            return
        apply_commands(engine, box[0])
        if engine.has_work():
            engine.step()
