"""Streamlit chat demo against a dlx server: block_append or denoise streams, masks drawn as placeholders, a
TTFT / tokens/s / NFE caption. `streamlit run examples/streamlit_block_append_chat.py -- --base-url URL`."""
import argparse
import json
import time
import urllib.request

import streamlit as st

MASKS = ("<|mask|>", "<|MASK|>", "<mask>")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="")
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_known_args()[0]


def stream_chat(base_url: str, body: dict, timeout: float):
    """Yields the JSON chunks of an OpenAI-style chat stream until [DONE]."""
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", "server error"))
            yield chunk


def show_masks(text: str, symbol: str) -> str:
    for mask in MASKS:
        text = text.replace(mask, symbol)
    return text


def main() -> None:
    args = parse_args()
    st.set_page_config(page_title="dlx chat")
    st.title("dlx chat")
    with st.sidebar:
        base_url = st.text_input("Base URL", args.base_url)
        model = st.text_input("Model", args.model)
        max_tokens = st.number_input("Max tokens", 1, 16384, 256)
        temperature = st.number_input("Temperature", 0.0, 2.0, 0.0, step=0.1)
        max_nfe = st.number_input("Max NFE (0 = unset)", 0, 100000, 0)
        mode = st.selectbox("Stream mode", ["block_append", "denoise"])
        symbol = st.text_input("Mask symbol", "▨")
        history = st.checkbox("Send chat history", False)
        if st.button("Clear chat"):
            st.session_state.messages = []
    st.session_state.setdefault("messages", [])
    for message in st.session_state.messages:
        st.chat_message(message["role"]).write(message["content"])
    prompt = st.chat_input("Ask something, e.g. Solve: 12 + 30.")
    if not prompt:
        return
    st.chat_message("user").write(prompt)
    st.session_state.messages.append({"role": "user", "content": prompt})
    messages = st.session_state.messages if history else [st.session_state.messages[-1]]
    body = {"messages": messages, "max_tokens": int(max_tokens), "temperature": float(temperature),
            "stream": True, "stream_mode": mode, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    if max_nfe:
        body["max_nfe"] = int(max_nfe)
    box, caption = st.chat_message("assistant").empty(), st.empty()
    text, nfe, ttft, usage, started = "", 0, None, None, time.perf_counter()
    try:
        for chunk in stream_chat(base_url, body, args.timeout):
            if not chunk["choices"]:
                usage = chunk.get("usage")
                continue
            choice = chunk["choices"][0]
            text += choice["delta"].get("content") or ""
            if text and ttft is None:
                ttft = time.perf_counter() - started
            snapshot = choice.get("snapshot")
            if snapshot:
                nfe = snapshot["nfe"]
                box.markdown(f"`nfe={nfe}` " + show_masks(snapshot["text"], symbol))
            else:
                box.markdown(text)
    except Exception as exc:  # noqa: BLE001 — shown to the person using the demo
        box.error(f"Request failed: {exc}")
        return
    box.markdown(text)
    elapsed = time.perf_counter() - started
    tokens = (usage or {}).get("completion_tokens", 0)
    caption.caption(f"TTFT {(ttft or 0) * 1000:.0f} ms · {tokens / max(elapsed, 1e-9):.1f} tokens/s · "
                    f"{tokens} tokens" + (f" · NFE {nfe}" if nfe else ""))
    st.session_state.messages.append({"role": "assistant", "content": text})


main()
