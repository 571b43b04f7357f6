"""Model families, Hugging Face checkpoint loading or dummy weights, and the tiny-checkpoint and shape factories.
`load_model(path)` is the one entry point the engine and tools use."""
from dlx.models.loader import load_model

__all__ = ["load_model"]
