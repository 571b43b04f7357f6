"""dlx: a serving engine for diffusion language models (block diffusion, paged KV, HTTP streaming).
The package root stays light: importing a subpackage pulls in only what it needs."""
__version__ = "0.1.0"
