"""What a person sees from `python launch.py`: one `dlx: ` line per fact at start-up (model, device, engine
workers, frontend workers, URL) and one at shutdown, and nothing from gunicorn, gevent or torch underneath."""
import os

from server_support import ROOT, ServerProcess

CPU_WARNING = "dlx: warning: no GPU in use: serving on the CPU"


def test_start_up_and_shutdown_print_one_dlx_line_per_fact(tmp_path):
    # One frontend, so that the server answering means every frontend has monkey-patched (where gevent warned).
    # gunicorn puts its control socket in $XDG_RUNTIME_DIR when that is set: here, where the test can look.
    server = ServerProcess(None, "--frontend-workers", "1", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert server.stop() == 0
    lines = server.output().splitlines()
    for noise in ("FutureWarning", "[INFO]", "Control socket", "Traceback"):
        assert noise not in "\n".join(lines), f"{noise!r} in the server's output:\n" + "\n".join(lines)
    assert [line for line in lines if not line.startswith("dlx: ")] == [], "\n".join(lines)
    assert lines[0].startswith(CPU_WARNING)
    assert lines[1:] == [f"dlx: model: dlx-tiny ({os.path.join(ROOT, 'dlx', 'assets', 'dlx-tiny')})",
                         "dlx: device: cpu, dtype bfloat16",
                         "dlx: engine workers: TP 1 × DP 1 = 1 process",
                         "dlx: frontend workers: 1 process (gunicorn, gevent)",
                         f"dlx: serving on {server.url}",
                         "dlx: stopped"]
    assert not list(tmp_path.iterdir()), "gunicorn opened a control socket"
