"""dlx's one entry point: flags → validated Config → shared-memory rings and status board → worker pool
and supervisor → gunicorn with gevent workers in-process. `python launch.py --help` lists every flag."""
import argparse
import json
import os
import signal
import sys
import threading

from dlx.config import DEFAULT_RUNTIME_FILE, Config, ConfigError, add_cli_arguments, config_from_args

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
                     "mask_id": mask_id, "vocab_size": cfg.hf_config["vocab_size"]}

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.data, f)

    def cleanup(self) -> None:
        for channel_set in self.channel_sets:
            channel_set.shutdown()
            channel_set.unlink_all()
        self.board.unlink()


def run_gunicorn(cfg: Config, runtime: dict) -> None:
    from gunicorn.app.base import BaseApplication
    if cfg.engine_cpus:   # the launcher and the frontends it forks stay off the engine workers' cores
        from dlx.workers.affinity import pin_process
        pin_process(cfg.frontend_cpus())

    class FrontendApp(BaseApplication):
        def load_config(self):
            options = {"bind": f"{cfg.host}:{cfg.port}", "workers": cfg.frontend_workers,
                       "worker_class": "gevent", "graceful_timeout": 10, "timeout": 60,
                       "loglevel": cfg.log_level, "proc_name": "dlx-frontend"}
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
    for warning in cfg.warnings:
        print(f"dlx: warning: {warning}", file=sys.stderr)
    from dlx.workers import torchrun
    if torchrun.under_torchrun():
        return torchrun.run(cfg, Runtime, run_gunicorn)
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
            print(f"dlx: serving {cfg.model_name} on http://{cfg.host}:{cfg.port}", flush=True)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
