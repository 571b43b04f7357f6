"""dlx's one entry point: flags → validated Config → shared-memory rings and status board → worker pool
and supervisor → gunicorn with gevent workers in-process. `python launch.py --help` lists every flag."""
import argparse
import json
import os
import signal
import sys
import threading
import warnings

from dlx.cli import add_cli_arguments, config_from_args
from dlx.config import DEFAULT_RUNTIME_FILE, Config, ConfigError

RING_SLOTS, SLOT_BYTES = 256, 4096
SPARE_CHANNELS = 4   # gunicorn restarts workers; an external gunicorn may run more of them


class Runtime:
    """The shared memory of one server and the description frontends attach with."""

    def __init__(self, cfg: Config):
        from dlx.engine.engine import special_ids
        from dlx.ipc import ChannelSet, cleanup_stale, run_prefix
        from dlx.ipc.board import StatusBoard
        cleanup_stale()
        self.prefix = run_prefix("srv")
        channels = cfg.frontend_workers + SPARE_CHANNELS
        self.channel_sets = [ChannelSet.create(f"{self.prefix}dp{g}", channels, RING_SLOTS, SLOT_BYTES)
                             for g in range(cfg.data_parallel_size)]
        self.board = StatusBoard.create(self.prefix, 1 + cfg.data_parallel_size + channels)
        mask_id, _ = special_ids(cfg)
        config = {k: v for k, v in cfg.to_dict().items() if k not in ("hf_config", "warnings")}
        self.data = {"prefix": self.prefix, "data_parallel_size": cfg.data_parallel_size, "config": config,
                     "mask_id": mask_id, "vocab_size": cfg.model_setting("vocab_size", None)}

    def write(self, path: str) -> None:
        """Readable by this user only: the description holds the API key, when one is set."""
        if os.path.exists(path):
            os.unlink(path)   # an earlier file keeps its mode on overwrite; start from a new one
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(self.data, f)

    def cleanup(self) -> None:
        for channel_set in self.channel_sets:
            channel_set.shutdown()
            channel_set.unlink_all()
        self.board.unlink()


def processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def announce(cfg: Config, under_torchrun: bool) -> None:
    """What this server is, one fact a line, before the engine loads; the URL follows once gunicorn listens."""
    from dlx.models.loader import dtype_name
    tp, dp = cfg.tensor_parallel_size, cfg.data_parallel_size
    hf = cfg.hf_config
    device = "cpu"
    if cfg.device == "cuda":   # device_count() leaves CUDA uninitialised, as gunicorn's fork later needs
        import torch
        device = f"cuda (GPUs {', '.join(map(str, cfg.gpu_ids(torch.cuda.device_count())[:tp * dp]))})"
    engines = processes(tp * dp) + (", one per torchrun rank" if under_torchrun else "")
    frontends = f"{processes(cfg.frontend_workers)} (gunicorn, gevent)"
    if cfg.no_frontend and not under_torchrun:
        frontends = "none (--no-frontend)"
    for fact in (f"model: {cfg.model_name} ({os.path.abspath(cfg.model)})",
                 f"device: {device}, dtype {dtype_name(cfg.dtype, hf.get('torch_dtype') or hf.get('dtype'))}",
                 f"engine workers: TP {tp} × DP {dp} = {engines}",
                 f"frontend workers: {frontends}"):
        print(f"dlx: {fact}", flush=True)


def run_gunicorn(cfg: Config, runtime: dict) -> None:
    from gunicorn.app.base import BaseApplication
    from gunicorn.workers.ggevent import GeventWorker
    if cfg.engine_cpus:   # the launcher and the frontends it forks stay off the engine workers' cores
        from dlx.workers.affinity import pin_process
        pin_process(cfg.frontend_cpus())

    class FrontendWorker(GeventWorker):
        def patch(self):
            # gevent's monkey patching runs isinstance() over every live object; on torch.distributed's deprecated
            # reduce_op object (imported by the launcher before it forked) each check warns, FutureWarning.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"`torch\.distributed\.reduce_op` is deprecated", FutureWarning)
                super().patch()

    def announce_url(arbiter) -> None:
        print(f"dlx: serving on {', '.join(str(listener) for listener in arbiter.LISTENERS)}", flush=True)

    class FrontendApp(BaseApplication):
        def load_config(self):
            options = {"bind": f"{cfg.host}:{cfg.port}", "workers": cfg.frontend_workers,
                       "worker_class": FrontendWorker, "graceful_timeout": 10, "timeout": 60,
                       "loglevel": cfg.log_level, "proc_name": "dlx-frontend", "when_ready": announce_url}
            # gunicorn ≥ 25.1 opens a control socket at one fixed path per user (~/.gunicorn/gunicorn.ctl),
            # which a second server would take over; dlx's frontends are managed through launch.py instead.
            if "control_socket_disable" in self.cfg.settings:
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from dlx.frontend.app import create_app
            return create_app(runtime)

    FrontendApp().run()


def wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch.py", description="Serve a diffusion language model over HTTP.")
    add_cli_arguments(parser)
    parser.add_argument("--runtime-file", default=DEFAULT_RUNTIME_FILE,
                        help="with --no-frontend: where to write the description that gunicorn frontends attach with")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        cfg.finalize()
    except ConfigError as exc:
        print(f"dlx: error: {exc}", file=sys.stderr)
        return 2
    from dlx.workers import torchrun
    speaks = not torchrun.under_torchrun() or os.environ.get("RANK") == "0"   # rank 0 speaks for the server
    if speaks:
        for warning in cfg.warnings:
            print(f"dlx: warning: {warning}", file=sys.stderr, flush=True)
        announce(cfg, torchrun.under_torchrun())
    if torchrun.under_torchrun():
        code = torchrun.run(cfg, Runtime, run_gunicorn)
        if speaks and code == 0:
            print("dlx: stopped", flush=True)
        return code
    from dlx.workers.pool import Supervisor, WorkerPool
    runtime = Runtime(cfg)
    pool = supervisor = None
    launcher = os.getpid()
    try:
        pool = WorkerPool(cfg, runtime.prefix, runtime.board)
        pool.start()
        if not pool.wait_ready():
            print("dlx: error: the engine workers failed to start (see the messages above)", file=sys.stderr)
            return 1
        supervisor = Supervisor(pool)
        supervisor.start()
        if cfg.no_frontend:
            runtime.write(args.runtime_file)
            print(f"dlx: engine ready; attach frontends with DLX_RUNTIME={args.runtime_file} "
                  f"gunicorn -k gevent 'dlx.frontend.app:create_app()'", flush=True)
            wait_for_signal()
        else:
            run_gunicorn(cfg, runtime.data)
    except SystemExit as exc:
        if os.getpid() != launcher:   # a forked gunicorn worker unwinding: the launcher's state is not its own
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        raise
    finally:
        if os.getpid() != launcher:
            os._exit(1)
        if supervisor:
            supervisor.stop()
        if pool:
            pool.stop()
        runtime.cleanup()
        if cfg.no_frontend and os.path.exists(args.runtime_file):
            os.unlink(args.runtime_file)
        if supervisor:   # it served; gunicorn's SystemExit on a clean stop passes through here too
            print("dlx: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
