"""OpenAI-compatible `/v1/chat/completions` and `/v1/completions`: standard objects and chunk streams
(role chunk first, finish reason, optional usage chunk), with denoising snapshots as an extension."""
import time

from flask import Flask

from dlx.frontend.schemas import parse_chat, parse_completion
from dlx.frontend.sse import chat_chunk, completion_chunk, finish_reason_openai, openai_error_frame, usage_chunk


def register(app: Flask, server, read_json, sse) -> None:
    @app.post("/v1/chat/completions")
    def chat_completions():
        return respond(server, parse_chat(read_json(), server.max_model_len, server.vocab_size), True, sse)

    @app.post("/v1/completions")
    def completions():
        return respond(server, parse_completion(read_json(), server.max_model_len, server.vocab_size), False, sse)


def respond(server, req, chat: bool, sse):
    handle, decoding, _ = server.start(req)
    rid = ("chatcmpl-" if chat else "cmpl-") + handle.rid
    created = int(time.time())
    if req.stream:
        return sse(stream(server, req, handle, decoding, rid, created, chat))
    for _ in server.events(handle, decoding):
        pass
    server.client.count("ok")
    reason = finish_reason_openai(decoding.finish_reason)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": decoding.text},
                  "finish_reason": reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": decoding.text, "finish_reason": reason, "logprobs": None}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": req.sampling.lora or server.model_name, "choices": [choice], "usage": decoding.usage(),
            "nfe": decoding.nfe, "timing": decoding.timing}


def stream(server, req, handle, decoding, rid: str, created: int, chat: bool):
    model = req.sampling.lora or server.model_name   # the adapter a request chose is the model that answered

    def chunk(text: str, reason: str | None, snapshot: dict | None, first: bool = False) -> bytes:
        if chat:
            delta = ({"role": "assistant", "content": text} if first
                     else ({"content": text} if text or not reason else {}))
            return chat_chunk(rid, created, model, delta, reason, snapshot)
        return completion_chunk(rid, created, model, text, reason, snapshot)

    def body(events):
        if chat:
            yield chunk("", None, None, first=True)
        for _ in events:
            if decoding.finished:
                break
            text, _, _ = decoding.new_stable_text()
            snapshot = None
            if req.stream_mode == "denoise":
                snapshot = {"text": decoding.snapshot_text(), "token_ids": decoding.region, "nfe": decoding.nfe}
                if req.return_pieces:
                    snapshot["pieces"] = server.pieces(decoding.region)
            if text or snapshot:
                yield chunk(text, None, snapshot)
        text, _, _ = decoding.new_stable_text()
        tail = [chunk(text, None, None)] if text else []
        final_snapshot = None
        if req.stream_mode == "denoise":
            final_snapshot = {"text": decoding.text, "token_ids": decoding.token_ids, "nfe": decoding.nfe}
            if req.return_pieces:
                final_snapshot["pieces"] = server.pieces(decoding.token_ids)
        tail.append(chunk("", finish_reason_openai(decoding.finish_reason), final_snapshot))
        if req.include_usage:
            tail.append(usage_chunk(rid, created, model, decoding.usage(), chat=chat))
        return b"".join(tail)
    return server.stream(handle, decoding, body, openai_error_frame)
