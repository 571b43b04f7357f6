"""The worker pool: spawns tensor-parallel × data-parallel worker processes, and a supervisor thread that
notices a dead worker, notes which requests the dead group was admitting, takes the pool down, marks the
server unhealthy and starts a fresh pool (frontends resubmit what they had in flight)."""
import multiprocessing.connection
import os
import socket
import threading
import time

import torch.multiprocessing as mp

from dlx.config import Config
from dlx.ipc.board import StatusBoard
from dlx.workers.worker import leader_slot, worker_main

STOP_GRACE_S = 10.0


def exited(process) -> bool:
    """Whether a worker has exited, read from its sentinel: gunicorn's arbiter reaps every child of the
    launcher (os.waitpid(-1)), after which multiprocessing's is_alive() would report a dead worker alive."""
    return bool(multiprocessing.connection.wait([process.sentinel], timeout=0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerPool:
    def __init__(self, cfg: Config, prefix: str, board: StatusBoard):
        self.cfg, self.prefix, self.board = cfg, prefix, board
        self.processes: list = []
        self.process_groups: list[int] = []   # the data-parallel group of each process
        self.generation = 0
        self.restarts = 0
        self.blamed: list[str] = []           # requests being admitted where a worker died last
        self.context = mp.get_context("spawn")

    def start(self) -> None:
        self.generation += 1
        self.set_state("starting")
        cfg_dict = {k: v for k, v in self.cfg.to_dict().items() if k != "warnings"}
        self.processes, self.process_groups = [], []
        for group in range(self.cfg.data_parallel_size):
            port = free_port()
            for tp_rank in range(self.cfg.tensor_parallel_size):
                p = self.context.Process(target=worker_main, name=f"dlx-worker-dp{group}-tp{tp_rank}",
                                         args=(tp_rank, group, cfg_dict, self.prefix, port, self.generation))
                p.start()
                self.processes.append(p)
                self.process_groups.append(group)

    def set_state(self, state: str, stop: bool = False) -> None:
        self.board.write(0, {"state": state, "generation": self.generation, "stop": stop,
                             "restarts": self.restarts, "blamed": self.blamed})

    def note_death(self) -> None:
        """A worker died: blame the requests its group's leader was admitting (the step that died was their first
        forward). Read before the pool stops: the next pool's leaders overwrite their records."""
        groups = sorted({g for g, p in zip(self.process_groups, self.processes) if exited(p)})
        records = [self.board.read(leader_slot(g)) or {} for g in groups]
        self.blamed = [rid for rec in records if rec.get("generation") == self.generation
                       for rid in rec.get("admitting", ())]

    def ready(self) -> bool:
        """Every leader of this generation has published a record."""
        for group in range(self.cfg.data_parallel_size):
            rec = self.board.read(leader_slot(group)) or {}
            if rec.get("generation") != self.generation or not rec.get("ready"):
                return False
        return True

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the leaders (model loaded); False if a worker died first or time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready():
            if self.dead() or (deadline is not None and time.monotonic() > deadline):
                return False
            multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout=0.2)
        self.set_state("ready")
        return True

    def dead(self) -> list:
        return [p for p in self.processes if exited(p)]

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Ask leaders to stop (they stop their followers), then terminate, then kill stragglers."""
        self.set_state("stopping", stop=True)
        deadline = time.monotonic() + grace
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.processes:
            if not exited(p):
                p.terminate()
        for p in self.processes:
            p.join(2.0)
            if not exited(p):
                p.kill()
                multiprocessing.connection.wait([p.sentinel], timeout=5.0)


class Supervisor(threading.Thread):
    """Restarts the pool when any worker dies; frontends see the leader vanish and resubmit in-flight requests."""

    def __init__(self, pool: WorkerPool):
        super().__init__(name="dlx-supervisor", daemon=True)
        self.pool = pool
        self.stopping = threading.Event()
        # stop() writes here, so the wait below needs no timeout: an idle server's supervisor never wakes.
        self.wake_read, self.wake_write = os.pipe()

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            sentinels = [p.sentinel for p in self.pool.processes]
            multiprocessing.connection.wait(sentinels + [self.wake_read])
            if self.stopping.is_set() or not self.pool.dead():
                continue
            self.pool.note_death()
            self.pool.set_state("restarting")
            self.pool.stop(grace=0.5)
            if self.stopping.is_set():
                return
            self.pool.restarts += 1
            self.pool.start()
            if self.pool.wait_ready():
                backoff = 1.0
            else:
                self.stopping.wait(backoff)   # failing again right away: don't thrash
                backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self.stopping.set()
        os.write(self.wake_write, b"x")
