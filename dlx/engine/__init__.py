"""The engine: request state, paged KV cache, scheduler, sampler, and decoding strategies (`strategy`, one file
per family: block_diffusion, canvas_diffusion with its dense canvas_runner). `dlx.engine.reference` is the
deliberately simple full-recompute decoder every path is tested against."""
