"""The engine: requests and their block buffers, paged KV cache, scheduler, samplers, decoding.
`dlx.engine.reference` is the deliberately simple full-recompute decoder every path is tested against."""
