"""Helpers of tests/test_docs_examples.py: compare what a docs example printed with the sample output the docs
show (HTTP status and headers, JSON and SSE shapes, text lines)."""
import json

from docs_support import STATUS_LINE, Command


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
