"""dlx: a serving engine for diffusion language models (block diffusion, paged KV, HTTP streaming).
`from dlx import LLM, SamplingParams` is the Python API; heavy imports happen on first use."""
__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):
    if name == "LLM":
        from dlx.llm import LLM
        return LLM
    if name == "SamplingParams":
        from dlx.params import SamplingParams
        return SamplingParams
    raise AttributeError(name)
