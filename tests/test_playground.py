"""The playground page in headless Chromium (Debian's package, driven by Playwright): masked cells appear
while decoding and resolve into the final text; a screenshot is kept as a test artifact."""
import os
import shutil

import pytest

from server_support import ServerProcess

CHROMIUM = shutil.which("chromium")
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir)
    yield srv
    assert srv.stop() == 0


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
@pytest.mark.parametrize("chat", [False, True])
def test_playground_shows_masks_resolving(server, chat):
    from playwright.sync_api import sync_playwright
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#prompt", "Solve: 12 + 30.")
            page.fill("#max_tokens", "96")
            if not chat:
                page.uncheck("#chat")
            masks_seen = page.evaluate("""() => new Promise((resolve) => {
                const seen = { masks: 0 };
                new MutationObserver(() => {
                    seen.masks = Math.max(seen.masks, document.querySelectorAll('#buffer .mask').length);
                }).observe(document.getElementById('buffer'), { childList: true, subtree: true });
                window.__seen = seen; resolve(true);
            })""")
            assert masks_seen
            page.click("#go")
            page.wait_for_selector("#final[data-done='1']", timeout=120_000)
            assert page.evaluate("window.__seen.masks") > 0          # masked cells were shown while decoding
            assert page.locator("#buffer .mask").count() == 0          # and all of them resolved
            assert page.locator("#buffer .cell").count() > 0
            assert "tokens per forward" in page.inner_text("#stats")
            page.screenshot(path=os.path.join(ARTIFACTS, f"playground{'-chat' if chat else ''}.png"), full_page=True)
        finally:
            browser.close()
