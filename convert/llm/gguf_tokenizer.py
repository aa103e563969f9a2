"""The tokenizer of a GGUF file, as a `tokenizers.Tokenizer` (convert/llm/sources.py loads the model)."""
from __future__ import annotations

from pocketml.runtime.errors import UnsupportedError

SPM_NORMAL, SPM_CONTROL, SPM_USER_DEFINED = 1, 3, 4       # tokenizer.ggml.token_type values (llama.cpp)


def _flag(meta: dict, key: str, default: bool) -> bool:
    v = meta.get(key)
    return v if isinstance(v, bool) else default


def gguf_tokenizer(parsed: dict, config, summary) -> tuple[object, str]:
    """The `tokenizers.Tokenizer` for a GGUF, and how it was built (for the manifest).

    - a SentencePiece vocabulary (`tokenizer.ggml.model` = "llama") without merges — Gemma 3's, Llama
      2's: `spm_bpe_tokenizer`, a BPE whose merges are ranked by the merged piece's score, which is how
      llama.cpp tokenizes these files. (transformers 4.57 builds Gemma's as a Unigram over the same
      scores, which splits "world" into "▁w" "or" "ld"; and builds Llama 2's merges in O(V²).)
    - otherwise transformers' own GGUF converter (`convert_gguf_tokenizer`, what
      `AutoTokenizer.from_pretrained(gguf_file=)` runs), wrapped in the model's fast tokenizer class,
      with the GGUF's add_bos_token / add_eos_token flags applied (transformers drops them, so
      SmolLM2's tokenizer prepended <|im_start|> to every text)."""
    meta = summary.metadata
    tk = dict(parsed.get("tokenizer") or {})
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    add_eos = meta.get("tokenizer.ggml.add_eos_token")
    if summary.tokenizer_model == "llama" and "merges" not in tk:
        return spm_bpe_tokenizer(tk, meta), "SentencePiece vocabulary as BPE ranked by piece score (pocketml)"
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import convert_gguf_tokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
    fast, extra = convert_gguf_tokenizer(config.model_type, tk)
    try:
        cls = TOKENIZER_MAPPING[type(config)][1] or PreTrainedTokenizerFast
    except KeyError:
        cls = PreTrainedTokenizerFast
    kwargs = {**(parsed.get("tokenizer_config") or {}), **extra}
    for key, v in (("add_bos_token", add_bos), ("add_eos_token", add_eos)):
        if isinstance(v, bool):
            kwargs[key] = v
    tok = cls(tokenizer_object=fast, **kwargs)
    return tok.backend_tokenizer, f"transformers convert_gguf_tokenizer ({cls.__name__})"


def spm_bpe_tokenizer(tk: dict, meta: dict):
    """A BPE `tokenizers.Tokenizer` from a GGUF SentencePiece vocabulary (tokens, scores, token types):
    merges are every split of a normal or user-defined piece into two pieces of the vocabulary, ranked by
    the piece's score (higher first), as transformers' SentencePiece extractor does for a .model file;
    control tokens are special added tokens, user-defined ones added tokens; byte fallback to <0xNN>;
    spaces become "▁" (with a leading one when `tokenizer.ggml.add_space_prefix`, llama.cpp's default)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    tokens, scores, types = tk.get("tokens"), tk.get("scores"), tk.get("token_type")
    if not tokens or scores is None or types is None or not len(tokens) == len(scores) == len(types):
        raise UnsupportedError("the GGUF's SentencePiece vocabulary lacks scores or token types "
                               "(tokenizer.ggml.scores / token_type), which its tokenizer needs")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges = []
    for piece, i in vocab.items():
        if types[i] not in (SPM_NORMAL, SPM_USER_DEFINED) or len(piece) < 2:
            continue
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            li, ri = vocab.get(left), vocab.get(right)
            if li is not None and ri is not None:
                local.append((li, ri, left, right))
        local.sort()
        merges.extend((scores[i], len(left), len(right), left, right) for _, _, left, right in local)
    merges.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)     # stable: ties keep vocabulary order
    unk = tk.get("unk_token_id", tk.get("unknown_token_id"))
    unk_token = tokens[unk] if isinstance(unk, int) and 0 <= unk < len(tokens) else None
    tok = Tokenizer(BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk_token, fuse_unk=True,
                        byte_fallback=True))
    prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", True)
    replace = normalizers.Replace(" ", "\u2581")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace]) if prefix else replace
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     *([decoders.Strip(" ", 1, 0)] if prefix else [])])
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in range(len(tokens)) if types[i] == SPM_CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in range(len(tokens)) if types[i] == SPM_USER_DEFINED])
    specials, single = [], ["$A"]
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    if _flag(meta, "tokenizer.ggml.add_bos_token", True) and isinstance(bos, int) and 0 <= bos < len(tokens):
        single = [tokens[bos], *single]
        specials.append((tokens[bos], bos))
    if _flag(meta, "tokenizer.ggml.add_eos_token", False) and isinstance(eos, int) and 0 <= eos < len(tokens):
        single = [*single, tokens[eos]]
        specials.append((tokens[eos], eos))
    if specials:
        pair = single + [s if s != "$A" else "$B" for s in single]
        tok.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=" ".join(pair),
                                                           special_tokens=specials)
    return tok


