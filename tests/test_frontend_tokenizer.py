"""The frontend tokenizer keeps the gevent loop free: a long prompt is encoded on the thread pool while
other greenlets (other streams of the same frontend) keep running, with the same ids as a direct encode."""
import gevent
from gevent import monkey

from dlx.frontend.tokenizer import OFF_LOOP_CHARS, FrontendTokenizer

RealEvent = monkey.get_original("threading", "Event")


class LoopProbe:
    """Stands in for the Rust tokenizer: its encode waits until a greenlet on the loop has run, which can only
    happen if encode itself is off the loop (inline, the wait would time out with the loop blocked)."""
    def __init__(self, backend):
        self.backend, self.loop_ran, self.saw_loop = backend, RealEvent(), None

    def encode(self, text, add_special_tokens=False):
        self.saw_loop = self.loop_ran.wait(timeout=20)
        return self.backend.encode(text, add_special_tokens=add_special_tokens)


def test_long_prompt_is_encoded_off_the_loop(tiny_dir):
    tok = FrontendTokenizer(tiny_dir)
    probe = tok.backend = LoopProbe(tok.backend)
    text = "the quick brown fox jumps over the lazy dog; " * 200
    assert len(text) >= OFF_LOOP_CHARS
    other_stream = gevent.spawn(probe.loop_ran.set)
    ids = tok.encode(text)
    other_stream.join()
    assert probe.saw_loop is True, "the gevent loop was blocked while the prompt was tokenized"
    assert ids == probe.backend.encode(text, add_special_tokens=False).ids


def test_short_text_stays_inline_and_equal(tiny_dir):
    tok = FrontendTokenizer(tiny_dir)
    probe = tok.backend = LoopProbe(tok.backend)
    probe.loop_ran.set()    # inline encode must not wait on the loop; it only has to give the same ids
    assert tok.encode("hello world") == probe.backend.encode("hello world", add_special_tokens=False).ids
    assert probe.saw_loop is True
