"""bench/serve.py end to end on the CPU: a config-only tiny model with dummy weights, in-process and through HTTP
at two concurrencies; the table has every row and its counts match the workload (timings are not checked)."""
import os
import shutil
import subprocess
import sys

import pytest

from tests_support import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = (1, 2)
PER_CLIENT = 2
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def config_only_dir(tiny_dir, tmp_path_factory) -> str:
    """The tiny checkpoint's config and tokenizer without its weights, as `python -m dlx.models.shapes` writes
    them: only --load-format dummy, passed to both engines, can serve it."""
    out = tmp_path_factory.mktemp("config-only")
    for name in os.listdir(tiny_dir):
        if ".safetensors" not in name:
            shutil.copy(os.path.join(tiny_dir, name), out)
    return str(out)


def table_rows(output: str) -> list[dict[str, str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.mark.slow
def test_serve_bench_prints_both_sides_at_every_concurrency(config_only_dir):
    command = [sys.executable, "bench/serve.py", "--model", config_only_dir, "--load-format", "dummy",
               "--dtype", "float32", "--device", "cpu", "--concurrency", ",".join(map(str, LEVELS)),
               "--requests-per-client", str(PER_CLIENT), "--max-tokens", str(MAX_TOKENS), "--rounds", "1",
               "--max-model-len", "256", "--kv-pages", "64", "--frontend-workers", "1", "--client-processes", "2",
               "--port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Serving benchmark on CPU" in out and "- torch " in out and ", triton " in out
    assert "(3 layers, hidden 64, 8 experts top-2" in out and "float32, dummy weights" in out
    assert f"answers of {MAX_TOKENS} tokens" in out and "--accept-threshold 0.95" in out

    rows = table_rows(out)
    assert [(int(row["concurrency"]), row["side"]) for row in rows] == [
        (c, side) for c in LEVELS for side in ("in-process", "HTTP")]
    for row in rows:
        c, requests = int(row["concurrency"]), int(row["requests"])
        assert requests == PER_CLIENT * c
        assert int(row["tokens"]) == requests * MAX_TOKENS   # ignore_eos: every answer exactly MAX_TOKENS
        assert int(row["steps"]) >= PER_CLIENT   # a client's requests run one after another
        assert 1 <= float(row["requests per step"]) <= c
        for column in ("wall s", "steps/s", "tokens/s", "tokens/s per stream", "mean step ms"):
            assert float(row[column]) > 0, (column, row)
        assert 0 < float(row["TTFT median ms"]) <= float(row["TTFT p90 ms"])
    for inproc, http in zip(rows[::2], rows[1::2]):
        assert inproc["HTTP ÷ in-process steps/s"] == "–"
        ratio = float(http["HTTP ÷ in-process steps/s"])
        assert ratio == pytest.approx(float(http["steps/s"]) / float(inproc["steps/s"]), rel=0.01)
    for c in LEVELS:
        assert f"wall s per round at concurrency {c}: in-process [" in out
        assert f"HTTP run at concurrency {c}:" in out
