"""Crafted GGUF files: every count, length and offset the header declares is checked before any library
(gguf-py, transformers) reads the file — `runtime/gguf.py`.

The fixtures are written byte by byte here (struct.pack), a few hundred bytes each: a valid tiny GGUF
(two tensors, a three-token vocabulary) and one hostile edit per case. Each case asserts the exit
code, that the message names the file and the field (expected vs found), and — for declared sizes —
that nothing near the declared size was allocated.
"""
from __future__ import annotations

import os
import random
import struct
import tracemalloc
from pathlib import Path

import pytest

from pocketml.runtime import gguf as G
from pocketml.runtime.errors import PocketmlError, UnsafeInputError, UnsupportedError

F32, F16, Q8_0, I32, Q8_K, Q4_0_4_4 = 0, 1, 8, 26, 15, 31
T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64 = 4, 5, 6, 7, 8, 9, 10
TYPE_SIZE = {F32: (1, 4), F16: (1, 2), Q8_0: (32, 34), I32: (1, 4), Q8_K: (256, 292)}


# ---------------------------------------------------------------- a GGUF written by hand

def s(text) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_str(key, value):
    return kv(key, T_STR, s(value))


def kv_u32(key, value):
    return kv(key, T_U32, struct.pack("<I", value))


def kv_arr(key, etype, items: list[bytes]):
    return kv(key, T_ARR, struct.pack("<IQ", etype, len(items)) + b"".join(items))


def nbytes(dims, ttype):
    block, size = TYPE_SIZE[ttype]
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def default_kvs(arch="llama"):
    return [kv_str("general.architecture", arch), kv_str("general.name", "tiny"),
            kv_u32(f"{arch}.context_length", 64), kv_u32("general.file_type", 7),
            kv_str("tokenizer.ggml.model", "gpt2"),
            kv_arr("tokenizer.ggml.tokens", T_STR, [s("a"), s("b"), s("<s>")]),
            kv_arr("tokenizer.ggml.token_type", T_I32, [struct.pack("<i", t) for t in (1, 1, 3)]),
            kv_u32("tokenizer.ggml.bos_token_id", 2), kv_u32("tokenizer.ggml.eos_token_id", 2),
            kv_str("tokenizer.chat_template", "{{ messages[0]['content'] }}")]


def build(*, magic=b"GGUF", version=3, kvs=None, tensors=(("tok_embd", (32, 8), Q8_0), ("norm", (32,), F32)),
          n_tensors=None, n_kv=None, offsets=None, align=32, data_extra=0, arch="llama") -> bytes:
    """A GGUF v3: header, metadata, tensor infos, padding, data (zeros). Overrides make it hostile."""
    kvs = default_kvs(arch) if kvs is None else kvs
    infos, offs, at = [], [], 0
    for i, (name, dims, ttype) in enumerate(tensors):
        off = at if offsets is None else offsets[i]
        offs.append(off)
        infos.append(s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                     + struct.pack("<IQ", ttype, off))
        at = -(-(at + nbytes(dims, ttype if ttype in TYPE_SIZE else F32)) // align) * align
    head = magic + struct.pack("<I", version) + struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                                                            len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += b"\0" * (-len(body) % align)
    natural = min(at, 1 << 16)            # the data the tensors need if laid out one after another (capped)
    return body + b"\0" * (natural + data_extra)


def write(tmp_path: Path, data: bytes, name="model.gguf") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def refused(path: Path, error=UnsafeInputError, *, field: str | None = None, words=()):
    with pytest.raises(error) as info:
        G.precheck_gguf(path)
    exc = info.value
    msg = str(exc)
    assert exc.exit_code == (4 if error is UnsafeInputError else 3)
    assert str(path) in msg, msg
    if field:
        assert field in msg, msg
    for w in words:
        assert w in msg, msg
    return exc


# ---------------------------------------------------------------- the control

def test_control_reads_and_summarises(tmp_path):
    p = write(tmp_path, build())
    summary = G.precheck_gguf(p)
    assert summary.architecture == "llama" and summary.version == 3
    assert summary.tensor_count == 2 and summary.parameter_count == 32 * 8 + 32
    assert summary.quant_types == {"Q8_0": 1, "F32": 1}
    assert summary.vocab_size == 3 and summary.context_length == 64
    assert summary.bos_token_id == 2 and summary.chat_template.startswith("{{")
    assert summary.file_type_name == "MOSTLY_Q8_0" and summary.alignment == 32
    t = {x.name: x for x in summary.tensors}
    assert t["tok_embd"].nbytes == 8 * 34 and t["norm"].offset == summary.data_offset + 288
    assert summary.as_dict()["main_quant_type"] == "Q8_0"


# ---------------------------------------------------------------- malformed → exit 4

@pytest.mark.parametrize("cut", [2, 10, 30, 100, "info", "data"])
def test_truncated(tmp_path, cut):
    data = build()
    summary = G.read_gguf(write(tmp_path, data, "full.gguf"))
    at = {"info": summary.data_offset - 20, "data": len(data) - 7}.get(cut, cut)
    p = write(tmp_path, data[:at])
    refused(p, words=("truncated" if cut != "data" else "past the end of the file",))


def test_empty_file(tmp_path):
    refused(write(tmp_path, b""), field="magic", words=("truncated",))


def test_wrong_magic(tmp_path):
    refused(write(tmp_path, build(magic=b"GGML")), field="magic", words=("expected b'GGUF'", "found b'GGML'"))


def test_unknown_version_is_malformed(tmp_path):
    refused(write(tmp_path, build(version=77)), field="version", words=("expected 2 or 3", "found 77"))


def test_tensor_data_past_the_end(tmp_path):
    p = write(tmp_path, build(offsets=[0, 4096]))
    exc = refused(p, field="tensor 'norm' data offset", words=("past the end of the file", "expected its 128 bytes"))
    assert exc.details["file"] == str(p)


def test_absurd_tensor_count(tmp_path):
    p = write(tmp_path, build(n_tensors=1 << 40))
    refused(p, field="tensor count", words=(f"at most {G.MAX_TENSORS}", str(1 << 40)))


def test_tensor_count_beyond_the_file(tmp_path):
    p = write(tmp_path, build(n_tensors=5000))            # under the cap, but 5000 × 32 bytes are not there
    refused(p, field="tensor count", words=("5000 tensors",))


def test_absurd_kv_count(tmp_path):
    refused(write(tmp_path, build(n_kv=1 << 33)), field="metadata key/value count")


def test_absurd_string_length_allocates_nothing(tmp_path):
    # a chat template declaring 2^60 bytes, then one declaring 900 KiB (under the cap) in a tiny file
    for n, words in ((1 << 60, (f"at most {G.MAX_STRING_BYTES} bytes",)), (900 << 10, ("truncated", "921600 bytes"))):
        bad = kv("tokenizer.chat_template", T_STR, struct.pack("<Q", n) + b"{{")
        p = write(tmp_path, build(kvs=[*default_kvs()[:-1], bad]))
        tracemalloc.start()
        try:
            refused(p, field="metadata 'tokenizer.chat_template'", words=words)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{peak} bytes allocated for a file of {p.stat().st_size}"


def test_absurd_key_length(tmp_path):
    bad = struct.pack("<Q", 1 << 50) + b"general.x" + struct.pack("<I", T_U32) + b"\0" * 4
    refused(write(tmp_path, build(kvs=[*default_kvs(), bad])), field="metadata key #10 (length)")


def test_absurd_array_length(tmp_path):
    for n, words in ((1 << 40, (f"at most {G.MAX_ARRAY_LEN} elements",)), (1 << 20, ("bytes left in the file",))):
        bad = kv("tokenizer.ggml.merges", T_ARR, struct.pack("<IQ", T_STR, n) + s("a b"))
        p = write(tmp_path, build(kvs=[*default_kvs(), bad]))
        refused(p, field="metadata 'tokenizer.ggml.merges' (array length)", words=words)


def test_array_nesting_is_bounded(tmp_path):
    inner = struct.pack("<IQ", T_ARR, 1) + struct.pack("<IQ", T_ARR, 1) + struct.pack("<IQ", T_U32, 0)
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv("x.nested", T_ARR, inner)])),
            field="metadata 'x.nested'", words=("nested at most",))


def test_unknown_value_type(tmp_path):
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv("x.weird", 99, b"\0" * 8)])),
            field="metadata 'x.weird' (value type)", words=("found 99",))


def test_bad_bool_and_bad_utf8(tmp_path):
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv("x.flag", T_BOOL, b"\x07")])),
            field="metadata 'x.flag'", words=("0 or 1", "found 7"))
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv_str("x.text", b"\xff\xfe")])),
            field="metadata 'x.text'", words=("UTF-8",))


def test_duplicate_key_and_tensor(tmp_path):
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv_str("general.name", "again")])),
            words=("unique keys", "'general.name'"))
    refused(write(tmp_path, build(tensors=(("a", (32,), F32), ("a", (32,), F32)))), words=("unique tensor names",))


def test_overlapping_tensors(tmp_path):
    p = write(tmp_path, build(tensors=(("a", (64,), F32), ("b", (32,), F32)), offsets=[0, 128]))
    refused(p, words=("tensors 'a'", "'b'", "overlap"))


def test_bad_dims_type_and_offsets(tmp_path):
    refused(write(tmp_path, build(tensors=(("a", (1, 1, 1, 1, 32), F32),))), field="tensor 'a' n_dims",
            words=("1 to 4", "found 5"))
    refused(write(tmp_path, build(tensors=(("a", (32, 0), F32),))), field="tensor 'a' dim 1")
    refused(write(tmp_path, build(tensors=(("a", (1 << 20, 1 << 20), F32),))), field="tensor 'a' element count")
    refused(write(tmp_path, build(tensors=(("a", (32,), 999),))), field="tensor 'a' ggml type",
            words=("found 999",))
    refused(write(tmp_path, build(tensors=(("a", (33,), Q8_0),))), field="tensor 'a' dim 0",
            words=("multiple of Q8_0's block of 32",))
    refused(write(tmp_path, build(tensors=(("a", (32,), F32),), offsets=[4])), field="tensor 'a' data offset",
            words=("multiple of the alignment 32",))


def test_bad_alignment(tmp_path):
    refused(write(tmp_path, build(kvs=[*default_kvs(), kv_u32("general.alignment", 24)])),
            field="general.alignment", words=("power of two", "found 24"))


def test_non_default_alignment_is_honoured(tmp_path):
    data = build(kvs=[*default_kvs(), kv_u32("general.alignment", 64)], align=64)
    assert G.precheck_gguf(write(tmp_path, data)).alignment == 64


def test_missing_architecture(tmp_path):
    refused(write(tmp_path, build(kvs=default_kvs()[1:])), field="general.architecture")


def test_symlink_and_fifo_refused(tmp_path):
    real = write(tmp_path, build(), "real.gguf")
    (tmp_path / "link.gguf").symlink_to(real)
    with pytest.raises(UnsafeInputError, match="link.gguf"):
        G.precheck_gguf(tmp_path / "link.gguf")
    os.mkfifo(tmp_path / "pipe.gguf")
    with pytest.raises(UnsafeInputError, match="not a regular file"):
        G.precheck_gguf(tmp_path / "pipe.gguf")


def test_mutations_only_raise_pocketml_errors(tmp_path):
    """Byte flips, truncations and insertions of the control: a refusal or a summary, never another exception."""
    base = build()
    rng = random.Random(14)
    p = tmp_path / "m.gguf"
    for i in range(300):
        data = bytearray(base)
        op = i % 3
        at = rng.randrange(len(data))
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            del data[at:]
        else:
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        p.write_bytes(bytes(data))
        try:
            G.precheck_gguf(p)
        except PocketmlError as exc:
            assert exc.exit_code in (3, 4) and str(p) in str(exc)


# ---------------------------------------------------------------- unsupported → exit 3

@pytest.mark.parametrize("arch,why", [("t5", "not a causal LM"), ("bert", "no GGUF loader"),
                                      ("rwkv6", "no GGUF loader"), ("lfm2", "tokenizer")])
def test_unsupported_architecture(tmp_path, arch, why):
    exc = refused(write(tmp_path, build(arch=arch)), UnsupportedError, field="architecture",
                  words=(repr(arch), why))
    assert exc.rejected[0]["op"] == arch


@pytest.mark.parametrize("ttype,name", [(I32, "I32"), (Q8_K, "Q8_K")])
def test_quant_type_that_cannot_be_dequantized(tmp_path, ttype, name):
    dims = (256,) if ttype == Q8_K else (32,)
    p = write(tmp_path, build(tensors=(("norm", (32,), F32), ("w", dims, ttype))))
    exc = refused(p, UnsupportedError, words=(f"{name} (1 tensor)", "cannot be de-quantized"))
    assert exc.rejected == [{"node": "w", "op": name, "target": "transformers", "reason": "no de-quantizer"}]


def test_removed_ggml_type(tmp_path):
    refused(write(tmp_path, build(tensors=(("w", (32,), Q4_0_4_4),))), UnsupportedError,
            words=("Q4_0_4_4", "removed from ggml"))


def test_old_and_big_endian_versions(tmp_path):
    refused(write(tmp_path, build(version=1)), UnsupportedError, field="version")
    big = build()
    big = big[:4] + struct.pack(">I", 3) + big[8:]
    refused(write(tmp_path, big), UnsupportedError, words=("big-endian",))


def test_no_tokenizer(tmp_path):
    kvs = [k for k in default_kvs() if b"tokenizer.ggml.tokens" not in k]
    refused(write(tmp_path, build(kvs=kvs)), UnsupportedError, field="tokenizer.ggml.tokens")


def test_installed_libraries_narrow_the_tables():
    """The installed transformers / gguf agree with runtime/gguf.py's tables (a version change shows here)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from pocketml.convert.llm.sources import live_support
    archs, qtypes = live_support()
    assert {"llama", "gemma3", "qwen2"} <= set(archs) <= set(G.CAUSAL_LM_ARCHITECTURES)
    assert {"Q4_1", "Q4_K", "Q8_0", "F32", "F16"} <= qtypes <= G.DEQUANTIZABLE


# ---------------------------------------------------------------- through the converter's entry points

def test_load_causal_lm_refuses_before_any_library(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from pocketml.convert.llm import load_causal_lm
    import transformers.modeling_gguf_pytorch_utils as tg

    def boom(*a, **k):
        raise AssertionError("transformers read a file the precheck should have refused")

    monkeypatch.setattr(tg, "load_gguf_checkpoint", boom)
    p = write(tmp_path, build()[:100], "trunc.gguf")
    with pytest.raises(UnsafeInputError, match="trunc.gguf.*truncated"):
        load_causal_lm(str(p))
    p = write(tmp_path, build(arch="t5"), "t5.gguf")
    with pytest.raises(UnsupportedError, match="t5"):
        load_causal_lm(str(p))


def test_cli_convert_refuses_bad_gguf(tmp_path):
    pytest.importorskip("transformers")
    from conftest import assert_no_partial, run_cli
    p = write(tmp_path, build(magic=b"GGML"), "bad.gguf")
    out = tmp_path / "out"
    r = run_cli("convert", str(p), "--to", "onnx", "-o", str(out))
    if r.exit_code == 2 and "unknown model" in r.output:
        pytest.skip("`pocketml convert` does not route .gguf files to convert/llm yet")
    assert r.exit_code == 4, r.output
    assert "bad.gguf" in r.output and "magic" in r.output
    assert_no_partial(out)
