"""Per-process frontend state: the tokenizer, the engine client, and the request lifecycle shared by
every endpoint (tokenize → submit → wait for acceptance → follow engine events → abort on disconnect), a
resubmission to the restarted pool included when the engine dies."""
import select
import socket
import time

from flask import request

from dlx.frontend.client import EngineClient, EngineFailed
from dlx.frontend.decoding import Decoding
from dlx.frontend.schemas import RequestError, check_prompt_length
from dlx.frontend.sse import SSE_DONE
from dlx.frontend.tokenizer import FrontendTokenizer
from dlx.ipc import messages
from dlx.params import parse_lora_paths

POLL_S = 0.5


class ClientGone(Exception):
    """The client closed its connection; the request is aborted and nobody reads the answer."""


def client_gone() -> bool:
    """True once the client closed its connection (checked while we wait on the engine). gevent's socket
    ignores MSG_DONTWAIT and would wait for data, so ask select first; a readable socket with nothing
    to read is closed."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Server:
    """Per-process state: runtime description, tokenizer, engine client."""

    def __init__(self, runtime: dict):
        self.runtime, self.config = runtime, runtime["config"]
        self.tokenizer = FrontendTokenizer(self.config["model"])
        self.mask_id, self.vocab_size = runtime["mask_id"], runtime["vocab_size"]
        self.max_model_len, self.model_name = self.config["max_model_len"], self.config["model_name"]
        self.client = EngineClient(runtime)
        self.started = int(time.time())
        lora = self.config.get("lora_path") if not self.config.get("pre_merge_lora") else ""
        self.adapters = [name for name, _ in parse_lora_paths(lora) if name] if lora else []   # requests' choice

    def choose_adapter(self, req) -> None:
        """The request's run-time LoRA adapter: its `lora`, or an OpenAI `model` naming one; unknown `lora`: 400."""
        if req.sampling.lora is None and req.model in self.adapters:
            req.sampling.lora = req.model
        if req.sampling.lora is not None and req.sampling.lora not in self.adapters:
            raise RequestError(f"unknown LoRA adapter '{req.sampling.lora}' (served adapters: "
                               f"{', '.join(self.adapters) or 'none'})", "lora")

    def pieces(self, token_ids: list[int]) -> list[str | None]:
        """Each token's own text, None for masks (the playground draws one cell per token)."""
        return [None if t == self.mask_id else self.tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, req) -> tuple[list[int], str | None]:
        """Token ids and the prompt text of a parsed request (chat messages go through the template);
        the text is None for a token-id prompt (start() decodes it once the engine has the request)."""
        if req.messages is not None:
            try:
                text = self.tokenizer.apply_chat_template(req.messages)
            except ValueError as exc:
                raise RequestError(str(exc), "messages") from None
            ids, field = self.encode(text), "messages"
        elif req.prompt_token_ids is not None:
            return req.prompt_token_ids, None
        else:
            text, ids, field = req.prompt, self.encode(req.prompt), "prompt"
        check_prompt_length(len(ids), self.max_model_len, field)
        return ids, text

    def start(self, req) -> tuple:
        """Submit to the engine and wait for it to accept; returns (handle, decoding, prompt text)."""
        self.choose_adapter(req)
        ids, text = self.prompt_ids(req)
        handle = self.client.submit(ids, req.sampling)
        if text is None:
            try:
                text = self.tokenizer.decode(ids)   # while the engine already works on the request
            except BaseException:
                self.client.abort(handle)   # never leave a submitted request without a reader
                raise
        while True:
            msg = handle.next_event(POLL_S)
            if msg is None:
                if client_gone():
                    self.client.abort(handle)
                    raise ClientGone()
                continue
            if msg["type"] == messages.LOST:
                self.recover(handle, None)
                continue
            if msg["type"] == messages.ERROR:
                self.client.finish(handle)
                raise RequestError(msg["message"], None, msg.get("code", 500),
                                   "overloaded" if msg.get("code") == 429 else
                                   ("invalid_request_error" if msg.get("code", 500) < 500 else "server_error"))
            if msg["type"] == messages.ACCEPTED:
                return handle, Decoding(self.tokenizer, self.mask_id, req.sampling.stop, len(ids)), text

    def events(self, handle, decoding: Decoding):
        """Yield after every engine event until the request is finished; aborts if the client leaves. The
        connection is checked after every event too: a non-streaming request writes nothing until its end, so
        nothing else would notice a client that left while steps keep coming."""
        try:
            while not decoding.finished:
                msg = handle.next_event(POLL_S)
                if client_gone():
                    raise ClientGone()
                if msg is None:
                    continue
                if msg["type"] == messages.LOST:
                    self.recover(handle, decoding)
                elif msg["type"] == messages.ERROR:
                    raise EngineFailed(msg["message"])
                elif msg["type"] == messages.STEP:
                    decoding.update(msg)
                    yield msg
        finally:
            if decoding.finished and not decoding.stopped_by_string:
                self.client.finish(handle)
            else:
                self.client.abort(handle)

    def recover(self, handle, decoding: Decoding | None) -> None:
        """The engine died with this request in flight: resubmit its prompt and the generated tokens it keeps
        (none before it was accepted) with what is left of its budgets; the client waits for the restarted pool
        and may decide that the request is not retried (EngineFailed)."""
        kept, nfe = [], 0
        if decoding is not None:
            nfe = decoding.nfe
            kept = decoding.resume(decoding.resume_point(handle.params.greedy))
        self.client.resubmit(handle, handle.prompt + kept, handle.params.remainder(len(kept), nfe), len(kept))

    def stream(self, handle, decoding: Decoding, body, error_frame):
        """An SSE stream's lifecycle, shared by every endpoint: body(events) yields frames while the engine
        works and returns the stream's tail, which leaves with `[DONE]` in one write (one send, one client
        wake-up). A client that left is counted and gets nothing more; an engine error gets
        error_frame(message) before `[DONE]`."""
        events = self.events(handle, decoding)
        try:
            tail = yield from body(events)
            self.client.count("ok")
            yield tail + SSE_DONE
        except ClientGone:
            self.client.count("aborted")
        except EngineFailed as exc:
            self.client.count("error")
            yield error_frame(str(exc)) + SSE_DONE
        finally:
            events.close()

    def generate_response(self, rid: str, decoding: Decoding, prompt_text: str) -> dict:
        return {"id": rid, "text": decoding.text, "token_ids": decoding.token_ids, "nfe": decoding.nfe,
                "finish_reason": decoding.finish_reason, "full_text": prompt_text + decoding.text,
                "usage": decoding.usage(), "timing": decoding.timing}
