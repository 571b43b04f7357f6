"""The Streamlit demo (optional extra) starts against a running server and its page loads and chats in
headless Chromium. Skipped when streamlit is not installed (`pip install -r requirements-demo.txt`)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from server_support import ROOT, ServerProcess
from tests_support import free_port

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("streamlit") is None or CHROMIUM is None,
                                reason="streamlit (optional extra) or chromium not installed")


def test_streamlit_demo_chats_with_server(tiny_dir):
    from playwright.sync_api import sync_playwright
    server = ServerProcess(tiny_dir)
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "examples/streamlit_block_append_chat.py",
                             "--server.headless", "true", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--", "--base-url", server.url],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and demo.poll() is None
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                        "--disable-background-networking"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/")
                page.get_by_text("dlx chat").first.wait_for(timeout=60_000)
                box = page.get_by_placeholder("Ask something, e.g. Solve: 12 + 30.")
                box.fill("Solve: 12 + 30.")
                box.press("Enter")
                page.get_by_text("tokens/s").first.wait_for(timeout=90_000)
                os.makedirs(os.path.join(ROOT, "tests", "artifacts"), exist_ok=True)
                page.screenshot(path=os.path.join(ROOT, "tests", "artifacts", "streamlit.png"), full_page=True)
            finally:
                browser.close()
    finally:
        demo.terminate()
        demo.wait(20)
        assert server.stop() == 0
