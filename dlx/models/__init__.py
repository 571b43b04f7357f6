"""Model families, Hugging Face checkpoint loading and the tiny-checkpoint factory.
`load_model(path)` is the one entry point the engine and tools use."""
from dlx.models.loader import load_model

__all__ = ["load_model"]
