"""The frontend tokenizer keeps the gevent loop free: a long prompt is encoded on the thread pool while
other greenlets (other streams of the same frontend) keep running, with the same ids as a direct encode."""
import gevent

from dlx.frontend.tokenizer import OFF_LOOP_CHARS, FrontendTokenizer


def test_long_prompt_is_encoded_off_the_loop(tiny_dir):
    tok = FrontendTokenizer(tiny_dir)
    text = "the quick brown fox jumps over the lazy dog; " * 5000   # 225k characters: ~90 ms of encoding here
    assert len(text) >= OFF_LOOP_CHARS
    ticks = []

    def other_stream():
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    ticker = gevent.spawn(other_stream)
    gevent.sleep(0)
    before = len(ticks)
    ids = tok.encode(text)
    during = len(ticks) - before
    ticker.kill()
    assert ids == tok.backend.encode(text, add_special_tokens=False).ids
    assert during >= 2, "the gevent loop was blocked while the prompt was tokenized"


def test_short_text_stays_inline_and_equal(tiny_dir):
    tok = FrontendTokenizer(tiny_dir)
    assert tok.encode("hello world") == tok.backend.encode("hello world", add_special_tokens=False).ids
