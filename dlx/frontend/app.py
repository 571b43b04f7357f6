"""Flask app factory run by gunicorn's gevent workers: validation, tokenization, the HTTP endpoints of
SPEC §4 and their SSE streams. `gunicorn -k gevent 'dlx.frontend.app:create_app()'` attaches to a pool."""
import json
import os

from flask import Flask, Response, request, send_from_directory, stream_with_context
from werkzeug.exceptions import HTTPException

from dlx.config import DEFAULT_RUNTIME_FILE
from dlx.frontend import openai_api
from dlx.frontend.client import EngineFailed, EngineUnavailable
from dlx.frontend.decoding import Decoding
from dlx.frontend.metrics import render_metrics
from dlx.frontend.schemas import RequestError, error_body, parse_generate
from dlx.frontend.server import ClientGone, Server
from dlx.frontend.sse import error_frame, final_frame, generate_append_frame, generate_snapshot_frame

STATIC = os.path.join(os.path.dirname(__file__), "static")


def json_error(message: str, status: int, type_: str | None = None, headers: dict | None = None) -> Response:
    type_ = type_ or ("invalid_request_error" if status < 500 else "server_error")
    return Response(json.dumps(error_body(message, type_, status)), status=status,
                    mimetype="application/json", headers=headers)


def load_runtime() -> dict:
    path = os.environ.get("DLX_RUNTIME", DEFAULT_RUNTIME_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"no dlx runtime file at {path}: start the engine with `python launch.py --no-frontend`")
    with open(path) as f:
        return json.load(f)


def create_app(runtime: dict | None = None) -> Flask:
    server = Server(runtime or load_runtime())
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = server.config["max_request_bytes"]
    app.extensions["dlx"] = server
    api_key = server.config.get("api_key")

    @app.before_request
    def authorize():
        if api_key and request.path != "/health" and request.headers.get("Authorization") != f"Bearer {api_key}":
            return json_error("missing or wrong API key (Authorization: Bearer <key>)", 401)
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        server.client.count("error")
        return json_error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        server.client.count("error")
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return json_error(exc.message, exc.status, exc.type, headers)

    @app.errorhandler(ClientGone)
    def gone(exc: ClientGone):
        server.client.count("aborted")
        return json_error("client closed the connection", 499)

    @app.errorhandler(EngineFailed)
    def engine_failed(exc: EngineFailed):
        server.client.count("error")
        return json_error(str(exc), 500, "server_error")

    @app.errorhandler(EngineUnavailable)
    def unavailable(exc: EngineUnavailable):
        server.client.count("error")
        return json_error(str(exc), 503, "server_error", {"Retry-After": "5"})

    @app.get("/health")
    def health():
        ok = server.client.healthy()
        return Response(json.dumps({"status": "ok" if ok else "unavailable"}), 200 if ok else 503,
                        mimetype="application/json")

    @app.get("/metrics")
    def metrics():
        return Response(render_metrics(server.client), mimetype="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def models():
        base = {"id": server.model_name, "object": "model", "created": server.started, "owned_by": "dlx",
                "decoding_strategy": server.config.get("decoding_strategy")}   # the playground reads it
        adapters = [dict(base, id=name, parent=server.model_name) for name in server.adapters]   # LoRA, by name
        return {"object": "list", "data": [base] + adapters}

    @app.get("/")
    def playground():
        return send_from_directory(STATIC, "index.html")

    @app.post("/generate")
    def generate():
        req = parse_generate(read_json(), server.max_model_len, server.vocab_size)
        handle, decoding, prompt_text = server.start(req)
        if not req.stream:
            for _ in server.events(handle, decoding):
                pass
            server.client.count("ok")
            return server.generate_response(handle.rid, decoding, prompt_text)
        return sse(stream_generate(server, req, handle, decoding, prompt_text))

    openai_api.register(app, server, read_json, sse)
    return app


def read_json() -> object:
    raw = request.get_data(cache=False)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON", None) from None


def sse(frames) -> Response:
    return Response(stream_with_context(frames), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def stream_generate(server: Server, req, handle, decoding: Decoding, prompt_text: str):
    def body(events):
        for _ in events:
            if decoding.finished:
                break
            if req.stream_mode == "denoise":
                pieces = server.pieces(decoding.region) if req.return_pieces else None
                yield generate_snapshot_frame(handle.rid, decoding.region, decoding.snapshot_text(), decoding.nfe,
                                              False, pieces=pieces)
            else:
                text, tokens, offset = decoding.new_stable_text()
                if text or tokens:
                    yield generate_append_frame(handle.rid, offset, text, tokens, decoding.nfe, False)
        if req.stream_mode == "block_append":
            text, tokens, offset = decoding.new_stable_text()
            last = generate_append_frame(handle.rid, offset, text, tokens, decoding.nfe, True)
        else:
            pieces = server.pieces(decoding.token_ids) if req.return_pieces else None
            last = generate_snapshot_frame(handle.rid, decoding.token_ids, decoding.text, decoding.nfe, True,
                                           pieces=pieces)
        return last + final_frame(server.generate_response(handle.rid, decoding, prompt_text))
    return server.stream(handle, decoding, body, lambda message: error_frame(handle.rid, message))
