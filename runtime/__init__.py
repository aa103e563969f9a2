"""pocketml.runtime — load and run pocketml artifacts. Needs numpy, onnxruntime, ai-edge-litert; never torch."""
from .errors import (EnvironmentMissing, PocketmlError, TargetMissed, UnsafeInputError, UnsupportedError,
                     UsageError, ValidationFailed)
from .manifest import Manifest, TensorSpec, read_manifest, verify_checksums
from .session import Session, load

__all__ = ["load", "Session", "Manifest", "TensorSpec", "read_manifest", "verify_checksums", "PocketmlError",
           "UsageError", "UnsupportedError", "UnsafeInputError", "ValidationFailed", "TargetMissed",
           "EnvironmentMissing"]
