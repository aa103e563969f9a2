"""pocketml: PyTorch / Hugging Face model → phone. Subpackages map to the repository's top-level folders:
pocketml.convert → convert/, pocketml.runtime → runtime/, pocketml.profiler → profiler/, pocketml.cli → cli/,
pocketml.profiles → profiles/ (device profiles, data)."""
__version__ = "0.1.0"
