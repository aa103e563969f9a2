"""CausalLMSpec: what the LLM exporters, the validator and the manifest need to know about a causal LM.

Made by `convert/llm/sources.load_causal_lm`. The module is the fp32 torch reference every artifact
is validated against; for a GGUF source that is the file's weights de-quantized to fp32, and
`source["reference"]` says so ("fp32 de-quantized from Q4_1 GGUF").
"""
from __future__ import annotations

import json
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

FAMILY = "causal-lm"
TASK = "text-generation"


@dataclass(eq=False)
class CausalLMSpec:
    name: str
    module: object                          # transformers *ForCausalLM, eval mode, fp32
    config: object                          # its Hugging Face config (PretrainedConfig)
    tokenizer_json: Path                    # a fast tokenizer saved as tokenizer.json only (never tokenizer.model)
    chat_template: str | None               # Jinja source, rendered by the runtime's sandbox; None: no template
    bos_token_id: int | None
    eos_token_ids: list[int]                # every id that ends generation (config / generation config / GGUF)
    context: int                            # the context length the artifacts are built for (≤ max_context)
    max_context: int                        # the model's own maximum (max_position_embeddings / GGUF context_length)
    parameter_count: int                    # unique parameters (tied embeddings counted once)
    source: dict                            # {kind, id, sha256, reference, trust_remote_code, …}
    family: str = FAMILY
    task: str = TASK
    pad_token_id: int | None = None
    hf_dir: Path | None = None              # the source directory when it is a Hugging Face one
    gguf: dict | None = None                # `GGUFSummary.as_dict()` for GGUF sources
    work_dir: Path | None = None            # where tokenizer.json was written (see sources.py)
    _cleanup: object = field(default=None, repr=False)

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def model_type(self) -> str:
        cfg = self.config.get_text_config(decoder=True) if hasattr(self.config, "get_text_config") else self.config
        return cfg.model_type

    def own_work_dir(self, path: Path) -> None:
        """Remove `path` when this spec is closed or garbage-collected (a directory sources.py created)."""
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(path), True)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def save_hf(self, dst: Path) -> Path:
        """A Hugging Face directory of the fp32 reference: config.json, model.safetensors,
        generation_config.json, tokenizer.json and a tokenizer_config.json (bos/eos and the chat
        template) — what litert-torch's and ONNX Runtime GenAI's builders read. No tokenizer.model:
        a GGUF-loaded tokenizer would write the GGUF itself under that name, which the builders then
        take for a SentencePiece model."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        self.module.save_pretrained(str(dst), safe_serialization=True)
        shutil.copyfile(self.tokenizer_json, dst / "tokenizer.json")
        import tokenizers
        tok = tokenizers.Tokenizer.from_file(str(self.tokenizer_json))

        def text(i):
            return tok.id_to_token(i) if i is not None else None

        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": text(self.bos_token_id),
               "eos_token": text(self.eos_token_id), "model_max_length": self.max_context,
               "clean_up_tokenization_spaces": False}
        if self.pad_token_id is not None:
            cfg["pad_token"] = text(self.pad_token_id)
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False), encoding="utf-8")
        stray = dst / "tokenizer.model"
        if stray.exists():
            stray.unlink()
        return dst

    def describe(self) -> dict:
        """For manifests and reports."""
        return {"name": self.name, "family": self.family, "task": self.task, "model_type": self.model_type,
                "parameter_count": self.parameter_count, "context": self.context, "max_context": self.max_context,
                "bos_token_id": self.bos_token_id, "eos_token_ids": list(self.eos_token_ids),
                "chat_template": self.chat_template is not None, "source": dict(self.source),
                **({"gguf": self.gguf} if self.gguf else {})}
