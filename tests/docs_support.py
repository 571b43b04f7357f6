"""Helpers of tests/test_docs_examples.py: find the fenced code blocks of the Markdown docs, split curl
commands out of them, compare a command's output with the sample output the docs show, and run a page's
Python blocks in one interpreter (`python tests/docs_support.py`, blocks as JSON on stdin)."""
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


# ---- outputs ---------------------------------------------------------------------------------------------
def split_http(output: str) -> tuple[int | None, dict[str, str], str]:
    """(status, headers, body) of `curl -i` output; an interim `100 Continue` response is skipped."""
    status, headers, rest = None, {}, output.replace("\r\n", "\n")
    while STATUS_LINE.match(rest):
        head, _, rest = rest.partition("\n\n")
        lines = head.split("\n")
        status = int(STATUS_LINE.match(lines[0]).group(1))
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, rest


def sse_frames(text: str) -> tuple[list, bool] | None:
    """The JSON frames of an SSE body and whether it ends with `data: [DONE]`; None if it is not SSE. A line
    `...` stands for frames a sample leaves out."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip() not in ("", "...")]
    if not lines or not all(line.startswith("data: ") for line in lines):
        return None
    frames, done = [], False
    for line in lines:
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
            continue
        if done:
            raise ValueError("a frame after data: [DONE]")
        frames.append(json.loads(payload))
    return frames, done


def kind(value) -> str:
    if value is None or isinstance(value, bool):
        return repr(value) if value is None else "bool"
    return {int: "number", float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def shape_problems(sample, actual, path: str = "$") -> list[str]:
    """Where `actual` differs in shape from `sample`: object keys, array emptiness, value kinds."""
    if kind(sample) != kind(actual):
        return [f"{path}: the docs show {kind(sample)}, the server sent {kind(actual)}"]
    if isinstance(sample, dict):
        problems = []
        if set(sample) != set(actual):
            missing, extra = sorted(set(sample) - set(actual)), sorted(set(actual) - set(sample))
            problems.append(f"{path}: keys differ (in the docs only: {missing}; in the answer only: {extra})")
        for key in set(sample) & set(actual):
            problems += shape_problems(sample[key], actual[key], f"{path}.{key}")
        return problems
    if isinstance(sample, list):
        if bool(sample) != bool(actual):
            return [f"{path}: the docs show {'an empty' if not sample else 'a non-empty'} array"]
        return shape_problems(sample[0], actual[0], f"{path}[0]") if sample else []
    return []


def compare_output(sample: str, actual: str) -> list[str]:
    """Compare a command's actual output with the sample the docs show after it: a status line and
    headers, JSON (same shape), SSE (every frame shown has a frame of the same shape) or plain text (every
    non-blank line shown occurs in the output). A line `...` stands for output the sample leaves out."""
    problems = []
    if STATUS_LINE.match(sample):
        want_status, want_headers, sample = split_http(sample)
        status, headers, actual = split_http(actual)
        if status != want_status:
            problems.append(f"status {status}, the docs show {want_status}")
        for name in set(want_headers) - {"date", "server", "content-length", "connection"}:
            if name not in headers:
                problems.append(f"header {name} missing")
            elif name in ("content-type", "retry-after") and headers[name] != want_headers[name]:
                problems.append(f"header {name}: {headers[name]!r}, the docs show {want_headers[name]!r}")
    sample_sse = sse_frames(sample)
    if sample_sse is not None:
        got = sse_frames(actual)
        if got is None:
            return problems + ["the docs show an SSE stream, the output is not one"]
        frames, done = got
        if sample_sse[1] and not done:
            problems.append("the stream does not end with data: [DONE]")
        for n, frame in enumerate(sample_sse[0]):
            if not any(not shape_problems(frame, f) for f in frames):
                nearest = min((shape_problems(frame, f) for f in frames), key=len, default=["no frames"])
                problems.append(f"no frame has the shape of the docs' frame {n + 1}: {nearest}")
        return problems
    try:
        want = json.loads(sample)
    except ValueError:
        lines = [line.strip() for line in sample.splitlines() if line.strip() not in ("", "...")]
        return problems + [f"line not in the output: {line!r}" for line in lines if line not in actual]
    try:
        got = json.loads(actual)
    except ValueError:
        return problems + ["the docs show JSON, the output is not JSON"]
    return problems + shape_problems(want, got)


def check_command_output(command: Command, output: str) -> list[str]:
    """The checks every curl example gets: a documented status (`# expect: NNN`) with the error shape, or
    success: a complete SSE stream without error frames, or JSON that is not an error (`# expect: text`:
    any output)."""
    status, _, body = split_http(output) if command.shows_headers else (None, {}, output)
    if command.expect and command.expect.isdigit():
        if not command.shows_headers:
            return ["`# expect: NNN` needs curl -i, so that the status line is in the output"]
        if status != int(command.expect):
            return [f"status {status}, the docs expect {command.expect}"]
        try:
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "code"} and error["code"] == status
        except (ValueError, KeyError, TypeError, AssertionError):
            return [f"not the error shape: {body[:300]!r}"]
        return []
    if status is not None and not 200 <= status < 300:
        return [f"status {status}: {body[:300]!r}"]
    if command.expect == "text":
        return [] if body.strip() else ["no output"]
    stream = sse_frames(body)
    if stream is not None:
        frames, done = stream
        errors = [f for f in frames if f.get("event") == "error" or "error" in f]
        return (["the stream does not end with data: [DONE]"] if not done else []) + \
            [f"error frame: {f}" for f in errors]
    try:
        answer = json.loads(body)
    except ValueError:
        return [f"neither JSON nor an SSE stream: {body[:300]!r}"]
    return [f"an error answer: {answer}"] if isinstance(answer, dict) and "error" in answer else []


# ---- Python blocks: one interpreter per page ---------------------------------------------------------------
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
