"""pocketml.convert.llm — causal language models: sources (built-ins, GGUF, Hugging Face directories)
and the spec the LLM exporters read. Import-light: torch and transformers load on first use."""
from .sources import LLM_BUILTINS, is_causal_lm_ref, load_causal_lm
from .spec import CausalLMSpec

__all__ = ["CausalLMSpec", "LLM_BUILTINS", "is_causal_lm_ref", "load_causal_lm"]
