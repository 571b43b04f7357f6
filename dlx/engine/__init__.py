"""The engine: request state, paged KV cache, scheduler, sampler, and decoding strategies (`strategy`, one file
per family). `dlx.engine.reference` is the deliberately simple full-recompute decoder every path is tested against."""
