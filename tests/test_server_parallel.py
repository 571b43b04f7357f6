"""Tensor × data parallelism on the CPU: a server with TP 2 × DP 2 (four gloo worker processes) answers
like the single-process engine, and spreads requests over both data-parallel groups."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from dlx import LLM, SamplingParams
from dlx.ipc.board import StatusBoard
from server_support import ServerProcess


@pytest.mark.slow
def test_tp2_dp2_server_matches_single_process(tiny_dir):
    prompts = [[5 + i, 17, 99, 230 - i, 41, 8 * i + 3] * (1 + i % 3) for i in range(8)]
    llm = LLM(tiny_dir, dtype="float32", device="cpu", max_model_len=256)
    expected = [o.token_ids for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24))]
    server = ServerProcess(tiny_dir, "--tensor-parallel-size", "2", "--data-parallel-size", "2", "--dtype", "float32")
    try:
        def ask(prompt):
            return requests.post(server.url + "/generate",
                                 json={"prompt": prompt, "temperature": 0, "max_tokens": 24}).json()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, prompts))
        assert [a["token_ids"] for a in answers] == expected
        board = StatusBoard.attach(f"dlx_{server.proc.pid}_srv")
        try:
            assert all((board.read(1 + group) or {}).get("nfe", 0) > 0 for group in (0, 1))
        finally:
            board.close()
        assert len([p for p in server.descendants()]) >= 4 + 2   # four workers, two gunicorn workers
    finally:
        assert server.stop() == 0
        assert server.shm_entries() == []
