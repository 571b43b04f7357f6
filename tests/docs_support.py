"""Helpers of tests/test_docs_examples.py: find the fenced code blocks of the Markdown docs, split curl commands
out of them, and run a page's Python blocks in one interpreter (`python tests/docs_support.py`, blocks as JSON on
stdin); tests/docs_output.py compares outputs with the docs' samples."""
import contextlib
import io
import json
import os
import re
import shlex
import sys
import traceback
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC_BASE = "http://127.0.0.1:8000"
# Other spellings of DOC_BASE that the docs may use; all are rewritten to the test server's address.
BASE_SPELLINGS = ("http://127.0.0.1:8000", "http://localhost:8000", "127.0.0.1:8000", "localhost:8000")
SHELL_LANGS = ("bash", "sh", "shell")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*(no-run|output)\s*(?::\s*(.*?))?\s*-->\s*$")
EXPECT = re.compile(r"^#\s*expect:\s*(\d{3}|text)\s*$")
STATUS_LINE = re.compile(r"^HTTP/[\d.]+ (\d{3})")


@dataclass
class Block:
    page: str          # path relative to the repository root
    line: int          # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None = None   # "no-run" or "output"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def has_curl(self) -> bool:
        return re.search(r"(^|[\s|;&(])curl\s", self.text) is not None

    @property
    def runnable(self) -> bool:
        return self.marker != "no-run" and self.marker != "output" and (
            self.lang == "python" or (self.lang in SHELL_LANGS and self.has_curl))


@dataclass
class Command:
    text: str
    expect: str | None = None   # a status code such as "400", or "text"
    line: int = 0

    @property
    def shows_headers(self) -> bool:
        return any(word == "--include" or re.fullmatch(r"-[a-zA-Z]*i[a-zA-Z]*", word) is not None
                   for word in shell_words(self.text))


def doc_pages() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return ["README.md"] + sorted(os.path.join("docs", n) for n in os.listdir(docs) if n.endswith(".md"))


def parse_blocks(page: str) -> list[Block]:
    """Every fenced block of a page, with the marker comment on the last non-blank line before its fence."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        block = Block(page, start + 1, lang.lower(), "\n".join(body) + "\n")
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marked = MARKER.match(before)
        if marked:
            block.marker, block.reason = marked.group(1), (marked.group(2) or "").strip()
        blocks.append(block)
    return blocks


def shell_commands(text: str) -> list[Command]:
    """Split a shell block into commands: backslash continuations are joined and a quoted argument may span
    lines. A comment line `# expect: 400` (or `# expect: text`) applies to the command after it."""
    commands, pending, current, first_line = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not current:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                expect = EXPECT.match(stripped)
                if expect:
                    pending = expect.group(1)
                continue
            first_line = number
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        try:
            shlex.split(current)
        except ValueError:   # an open quote: the argument goes on on the next line
            current += "\n"
            continue
        commands.append(Command(current.strip(), pending, first_line))
        current, pending = "", None
    if current.strip():
        commands.append(Command(current.strip(), pending, first_line))
    return commands


def rewrite_base(text: str, base: str) -> str:
    """Point every spelling of the docs' server address at `base` (e.g. http://127.0.0.1:PORT)."""
    host = base.split("://", 1)[1]
    for spelling in BASE_SPELLINGS:
        text = text.replace(spelling, base if spelling.startswith("http") else host)
    return text


def json_body_keys(command: str) -> list[str]:
    """The keys of every JSON object in a curl command's -d/--data body (nested ones included)."""
    words, keys = shell_words(command), []
    for flag, value in zip(words, words[1:]):
        if flag in ("-d", "--data", "--data-raw", "--data-binary") and not value.startswith("@"):
            try:
                keys += list(_keys(json.loads(value)))
            except ValueError:
                continue
    return keys


def shell_words(command: str) -> list[str]:
    """The words of a shell command line, with |, ; and & as words of their own."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _keys(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def run_blocks(sources: list[str]) -> list[dict]:
    """exec each source in one shared namespace, in order (a page's examples build on each other); stops at
    the first failure. Returns [{"stdout", "error"}] per block run."""
    namespace = {"__name__": "__main__"}
    results = []
    for source in sources:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(source, "<docs example>", "exec"), namespace)
            results.append({"stdout": out.getvalue(), "error": None})
        except BaseException:   # noqa: B036 - a failing example is reported, whatever it raised
            results.append({"stdout": out.getvalue(), "error": traceback.format_exc()})
            break
    return results


if __name__ == "__main__":
    results = run_blocks(json.load(sys.stdin))
    sys.stdout.write("\n@@docs-results@@" + json.dumps(results))
