"""pocketml.convert — PyTorch / Hugging Face model → validated ONNX, TFLite and Core ML artifacts."""
from .pipeline import Outcome, Recipe, run

__all__ = ["Recipe", "Outcome", "run"]
