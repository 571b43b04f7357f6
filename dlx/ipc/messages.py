"""The messages frontends and the engine leader exchange over the rings, one builder per kind: the keys both
sides read are written here and nowhere else. On the wire they are plain dicts (msgpack), typed below."""
from typing import NotRequired, TypedDict

# Frontend → leader.
GENERATE, ABORT = "generate", "abort"
# Leader → frontend: an answer to a generate (accepted or error), a request's step, several events at once.
ACCEPTED, ERROR, STEP, BATCH = "accepted", "error", "step", "batch"
# Inside a frontend: its reader tells a request's handler that the engine that had the request died.
LOST = "lost"


class Generate(TypedDict):
    type: str
    rid: str
    prompt: list[int]
    params: dict              # dlx.params.SamplingParams.to_dict()
    resume: NotRequired[dict]  # dlx.params.Resumption.to_dict(): resubmitted after the engine that had it died


class Abort(TypedDict):
    type: str
    rid: str


class Accepted(TypedDict):
    type: str
    rid: str


class Error(TypedDict):
    type: str
    rid: str
    message: str
    code: int                 # the HTTP status the frontend answers with (400, 429, 500)


class Step(TypedDict, total=False):
    type: str
    rid: str
    offset: int               # tokens[0] replaces the region from this index on (what was stable before)
    tokens: list[int]         # the generated region from `offset`, masks at undecoded positions
    stable: int               # leading tokens of the region that will not change
    nfe: int
    finished: bool
    reason: str               # finished only: stop | length | max_nfe | repetition | abort
    timing: dict              # finished: queue_s, prefill_s, decode_s, tokens_per_s, tokens_per_forward;
    #                           a request's first step: queue_s and prefill_s


class Batch(TypedDict):
    type: str
    events: list[dict]


class Lost(TypedDict):
    type: str
    rid: str


def generate(rid: str, prompt: list[int], params: dict, resume: dict | None = None) -> Generate:
    msg: Generate = {"type": GENERATE, "rid": rid, "prompt": prompt, "params": params}
    if resume is not None:
        msg["resume"] = resume
    return msg


def lost(rid: str) -> Lost:
    return {"type": LOST, "rid": rid}


def abort(rid: str) -> Abort:
    return {"type": ABORT, "rid": rid}


def accepted(rid: str) -> Accepted:
    return {"type": ACCEPTED, "rid": rid}


def error(rid: str, message: str, code: int) -> Error:
    return {"type": ERROR, "rid": rid, "message": message, "code": code}


def step(rid: str, offset: int, tokens: list[int], stable: int, nfe: int, finished: bool,
         reason: str | None = None, timing: dict | None = None) -> Step:
    msg: Step = {"type": STEP, "rid": rid, "offset": offset, "tokens": tokens, "stable": stable, "nfe": nfe,
                 "finished": finished}
    if reason is not None:
        msg["reason"] = reason
    if timing is not None:
        msg["timing"] = timing
    return msg


def batch(events: list[dict]) -> dict:
    """One ring message for several events; a lone event travels as itself."""
    return events[0] if len(events) == 1 else {"type": BATCH, "events": events}


def unbatch(msg: dict) -> list[dict]:
    return msg["events"] if msg.get("type") == BATCH else [msg]
