"""Every curl and Python example of the user docs (README.md, docs/*.md) runs, against one live server on the
embedded dlx-tiny model (started once for this module) or, for the Python API, in one interpreter per page.

The rules the docs follow:
- A ```bash (or sh, shell) block that contains `curl` runs: each command in it (backslash continuations joined,
  a quoted argument may span lines) runs in bash, from the repository root, with the docs' server address
  http://127.0.0.1:8000 (also spelled localhost:8000) rewritten to the test server's.
- A ```python block runs. A page's Python blocks run in order in one interpreter and share their names (later
  examples may use the `llm` an earlier one made); the server address is rewritten the same way, so openai
  client examples talk to the live server, and `dlx.LLM` examples load the embedded model in that interpreter.
- Checks for every curl command: it exits 0 and prints a complete SSE stream (ending with `data: [DONE]`, no
  error frame) or JSON that is not an error. A comment line `# expect: 400` (any status) before a command
  instead expects that status and the error shape; such a command uses `curl -i`. `# expect: text` accepts
  any output (the Prometheus page, the playground). Every field of a curl JSON body must be a name dlx's source
  knows: a renamed field would otherwise be ignored silently (unknown fields are).
- `<!-- output -->` on the last line before a block makes that block the sample output of the runnable block
  just before it (of its last command): a status line and headers, JSON, SSE frames or text. JSON must have
  the same shape (keys, value kinds), every SSE frame shown must have a frame of the same shape in the actual
  stream, and every non-blank text line shown must occur in the actual output (a line `...` marks output left out).
- `<!-- no-run: reason -->` on the last line before a block skips it (launch commands, installs, torchrun,
  the gunicorn attach form, examples that need a real LLaDA2 checkpoint or another server configuration).
  Blocks in other languages (console, text, json, ...) never run, but one that holds a curl command must
  carry the marker too: every curl or Python block is run or explicitly marked, or the first test fails.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from docs_output import check_command_output, compare_output
from docs_support import (DOC_BASE, ROOT, SHELL_LANGS, doc_pages, json_body_keys, parse_blocks, rewrite_base,
                          shell_commands, shell_words)
from server_support import ServerProcess

COMMAND_TIMEOUT_S = 120
PAGES = {page: parse_blocks(page) for page in doc_pages()}
CURL_BLOCKS = [b for blocks in PAGES.values() for b in blocks if b.runnable and b.lang in SHELL_LANGS]
PYTHON_PAGES = [page for page, blocks in PAGES.items() if any(b.runnable and b.lang == "python" for b in blocks)]
QUICKSTART = ['pip install -e . && python launch.py',
              'pip install -e ".[test]" && (command -v chromium >/dev/null || (apt-get update -qq && apt-get install '
              '-y -qq chromium)) && python -m pytest -q']


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(None)
    yield srv
    assert srv.stop() == 0, srv.output()


def samples(page: str) -> dict[int, object]:
    """Sample outputs of a page: the line of the runnable block they follow → the sample block."""
    blocks, found = PAGES[page], {}
    for before, block in zip(blocks, blocks[1:]):
        if block.marker == "output":
            found[before.line] = block
    return found


def known_names() -> str:
    """All of dlx's Python source in one string, to look request field names up in."""
    texts = []
    for folder, _, files in os.walk(os.path.join(ROOT, "dlx")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    texts.append(f.read())
    return "\n".join(texts)


def test_every_example_is_run_or_marked():
    problems, runs, skipped = [], 0, 0
    for page, blocks in PAGES.items():
        for before, block in zip([None] + blocks, blocks):
            if block.marker == "no-run":
                skipped += 1
                if not block.reason:
                    problems.append(f"{block.where}: no-run needs a reason (<!-- no-run: why -->)")
            elif block.marker == "output":
                if before is None or not before.runnable:
                    problems.append(f"{block.where}: an output sample must follow a runnable block")
            elif block.has_curl and not block.runnable:
                problems.append(f"{block.where}: a ```{block.lang or '(no language)'} block with curl is neither run "
                                "(```bash) nor marked <!-- no-run: why -->")
            runs += block.runnable
            if block.runnable and block.lang in SHELL_LANGS:
                for command in shell_commands(block.text):
                    if "curl" not in shell_words(command.text):
                        problems.append(f"{block.where}: not a curl command in a runnable block: {command.text[:60]}")
                    elif DOC_BASE not in command.text and "localhost:8000" not in command.text:
                        problems.append(f"{block.where}: a curl command that does not talk to {DOC_BASE}")
    assert not problems, "\n".join(problems)
    assert len(CURL_BLOCKS) >= 10 and len(PYTHON_PAGES) >= 2 and skipped >= 3, (runs, skipped)


def test_readme_quickstart_commands_verbatim():
    bash = [b.text.strip() for b in PAGES["README.md"] if b.lang == "bash"]
    assert bash[:2] == QUICKSTART, bash[:2]


def test_curl_bodies_use_known_fields():
    source, unknown = known_names(), []
    for block in CURL_BLOCKS:
        for command in shell_commands(block.text):
            for key in json_body_keys(command.text):
                if f'"{key}"' not in source and f"'{key}'" not in source:
                    unknown.append(f"{block.where}: {key}")
    assert not unknown, "request fields dlx does not know: " + ", ".join(unknown)


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[b.where for b in CURL_BLOCKS])
def test_curl_example(server, block):
    outputs, problems = [], []
    for command in shell_commands(block.text):
        run = subprocess.run(["bash", "-o", "pipefail", "-c", rewrite_base(command.text, server.url)], cwd=ROOT,
                             capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        where = f"{block.page}:{block.line + command.line}"
        if run.returncode != 0:
            problems.append(f"{where}: exit {run.returncode}: {run.stderr[-500:]}")
            continue
        problems += [f"{where}: {p}" for p in check_command_output(command, run.stdout)]
        outputs.append(run.stdout)
    sample = samples(block.page).get(block.line)
    if sample is not None and outputs and not problems:
        problems += [f"{sample.where}: {p}" for p in compare_output(sample.text, outputs[-1])]
    assert not problems, "\n".join(problems) + "\n" + server.output()[-2000:]


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_examples(server, page):
    blocks = [b for b in PAGES[page] if b.runnable and b.lang == "python"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, os.path.join("tests", "docs_support.py")], cwd=ROOT, env=env,
                         input=json.dumps([rewrite_base(b.text, server.url) for b in blocks]),
                         capture_output=True, text=True, timeout=600)
    marker = run.stdout.rfind("@@docs-results@@")
    assert marker >= 0, f"the example runner failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout[marker + len("@@docs-results@@"):])
    problems = []
    for block, result in zip(blocks, results):
        if result["error"]:
            problems.append(f"{block.where}: {result['error']}")
            continue
        sample = samples(page).get(block.line)
        if sample is not None:
            problems += [f"{sample.where}: {p}" for p in compare_output(sample.text, result["stdout"])]
    if len(results) < len(blocks) and not problems:
        problems.append(f"only {len(results)} of {len(blocks)} blocks ran")
    assert not problems, "\n".join(problems) + "\n" + re.sub(r"\n{3,}", "\n\n", run.stderr[-2000:])


def test_serving_page_documents_every_flag():
    help_text = subprocess.run([sys.executable, "launch.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                               timeout=60, check=True).stdout
    with open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8") as f:
        page = f.read()
    flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert len(flags) > 30
    assert not sorted(f for f in flags if f"`{f}" not in page), "flags missing from docs/serving.md"


def test_python_api_page_documents_every_field():
    import dataclasses

    from dlx import SamplingParams
    from dlx.llm import Completion, StreamEvent
    with open(os.path.join(ROOT, "docs", "python-api.md"), encoding="utf-8") as f:
        page = f.read()
    names = {f.name for cls in (SamplingParams, Completion, StreamEvent) for f in dataclasses.fields(cls)}
    assert not sorted(n for n in names if f"`{n}`" not in page), "fields missing from docs/python-api.md"
