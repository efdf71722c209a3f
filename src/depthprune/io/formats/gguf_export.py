"""Export a (pruned or dense) transformers causal LM to a GGUF file, through the ``gguf`` package.

Names come from ``gguf.get_tensor_name_map`` (the mapping llama.cpp's own converter uses),
the file from ``gguf.GGUFWriter``, q8_0/bf16 blocks from ``gguf.quants.quantize`` and the special
tokens, merges and chat template from ``gguf.SpecialVocab``. What this module adds is the per
architecture knowledge that the converter keeps in its model classes:

- Llama family: llama.cpp applies rotary embeddings to interleaved pairs, transformers to halves,
  so ``attn_q``/``attn_k`` rows are permuted per head (transformers' GGUF loader undoes it).
- Qwen2/Qwen3: no permutation (llama.cpp uses the NeoX rotary layout for them); Qwen3 has per-head
  q/k norms and an explicit head dimension (``attention.key_length``).
- Gemma 3: transformers' RMSNorm computes ``x * (1 + w)`` while llama.cpp's computes ``x * w``, so
  every norm weight is written plus one. GGUF has no per-layer attention type for Gemma 3:
  llama.cpp (and transformers' GGUF loader) derive it from the layer index (every 6th layer
  global). A pruned model whose kept layers no longer follow that pattern is refused: writing it
  would silently change which layers attend globally.

Tokenizer: byte-level BPE vocabularies are written as ``gpt2`` (tokens, types, merges; the
pre-tokenizer is recognised from ``tokenizer.json`` — Qwen2, Llama-3, SmolLM or plain GPT-2 — and
refused when unknown, because llama.cpp would split text differently). SentencePiece-style BPE
vocabularies (byte fallback, ``▁`` for spaces, e.g. Gemma) are written as ``llama``; their scores
are rebuilt from the merge ranks (score of a token = minus the rank of the merge that makes it), which
gives llama.cpp's highest-score-first merging the same order as the BPE merges.

Precisions: ``f32``, ``f16``, ``bf16``, ``q8_0``. One-dimensional tensors (norms, biases) stay f32
as llama.cpp's converter does; q8_0 falls back to f16 for a matrix whose rows are not a multiple
of 32. The file is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType

from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# transformers model_type -> gguf architecture name
SUPPORTED = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}
GEMMA3_GLOBAL_EVERY = 6  # llama.cpp / transformers' GGUF loader: layer i is global when (i + 1) % 6 == 0


@dataclass
class GGUFExport:
    """What was written."""

    path: str
    architecture: str
    gguf_type: str
    block_count: int
    tensors: int
    bytes: int
    tokenizer_model: str
    tokenizer_pre: str | None
    tensor_types: dict = field(default_factory=dict)  # ggml type name -> count

    def to_json(self) -> dict:
        return asdict(self)


def _arch_of(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise DepthpruneError(
            f"GGUF export supports {', '.join(sorted(set(SUPPORTED) - {'gemma3'}))} models, not '{model_type}'; "
            "save it as a Hugging Face checkpoint (--format hf) and convert it with llama.cpp's converter")
    return SUPPORTED[model_type]


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise DepthpruneError(f"unknown --gguf-type '{gguf_type}': use one of {', '.join(GGUF_TYPES)}")


def check_exportable_config(config, gguf_type: str = "f16") -> str:
    """Refuse (one sentence) what GGUF cannot represent faithfully, from the config alone; returns the gguf
    architecture. The planner calls it before any weights are read; :func:`check_exportable` again on the model."""
    check_gguf_type(gguf_type)
    arch = _arch_of(config)
    if arch == "gemma3" and getattr(config, "num_hidden_layers", None) is not None:
        types = list(getattr(config, "layer_types", None) or [])
        expected = ["full_attention" if (i + 1) % GEMMA3_GLOBAL_EVERY == 0 else "sliding_attention"
                    for i in range(config.num_hidden_layers)]
        if types and types != expected:
            globals_ = [i for i, t in enumerate(types) if t == "full_attention"]
            raise DepthpruneError(
                f"this Gemma 3 model's global-attention layers are {globals_} (0-based, after pruning), but GGUF "
                f"has no per-layer attention type and llama.cpp would make every {GEMMA3_GLOBAL_EVERY}th layer "
                "global, so the file would silently change attention; save it as a Hugging Face checkpoint, "
                "or choose layers that keep the pattern")
        if getattr(config, "rope_scaling", None) not in (None, {}) and not isinstance(config.rope_scaling, dict):
            raise DepthpruneError("this Gemma 3 model's rope scaling cannot be written to GGUF")
    if getattr(config, "attention_bias", False) and arch in ("llama",):
        raise DepthpruneError("GGUF export of Llama models with attention biases is not supported")
    return arch


def check_exportable(model, gguf_type: str = "f16") -> str:
    """:func:`check_exportable_config` on an in-memory model (its config after pruning)."""
    return check_exportable_config(model.config, gguf_type)


# ---------------------------------------------------------------- metadata


def _rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        if "rope_theta" in params:
            return float(params["rope_theta"])
        full = params.get("full_attention")
        if isinstance(full, dict) and "rope_theta" in full:
            return float(full["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def _rope_scaling(config) -> dict | None:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        params = params["full_attention"]
    if not isinstance(params, dict):
        params = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind in (None, "default") else dict(params)


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _write_hparams(writer, config, arch: str) -> None:

    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    theta = _rope_theta(config)
    if theta is not None:
        writer.add_rope_freq_base(theta)
    head_dim = _head_dim(config)
    writer.add_vocab_size(int(config.vocab_size))
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch == "gemma3" and getattr(config, "sliding_window", None):
        writer.add_sliding_window(int(config.sliding_window))
    scaling = _rope_scaling(config)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
            if "original_max_position_embeddings" in scaling:
                writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        else:
            raise DepthpruneError(f"GGUF export does not support '{kind}' rope scaling; save a Hugging Face checkpoint")


# ---------------------------------------------------------------- tensors


def _permute_for_llama_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from [half0, half1] order to interleaved pairs (llama.cpp's rotary layout)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _transform(arch: str, gguf_name: str, data: np.ndarray, config) -> np.ndarray:
    if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
        n_head = config.num_attention_heads
        if gguf_name.endswith("attn_k.weight"):
            n_head = getattr(config, "num_key_value_heads", None) or n_head
        return _permute_for_llama_rope(data, n_head)
    if arch == "gemma3" and gguf_name.endswith("norm.weight"):
        return data + 1.0
    return data


def _encode(data: np.ndarray, gguf_type: str):
    """(array to write, ggml type) for one float32 tensor."""
    T = GGMLQuantizationType

    if data.ndim <= 1 or gguf_type == "f32":
        return data.astype(np.float32), T.F32
    if gguf_type == "f16":
        return data.astype(np.float16), T.F16
    if gguf_type == "bf16":
        return gguf.quants.quantize(data, T.BF16), T.BF16
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0]:
        return data.astype(np.float16), T.F16
    return gguf.quants.quantize(data, T.Q8_0), T.Q8_0


def _tensors(model, arch: str, config, gguf_type: str):
    """Yield (gguf name, array, ggml type) for every tensor of the model, one at a time."""

    arch_enum = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise DepthpruneError(f"the gguf package has no GGUF name for tensor '{hf_name}' of a {arch} model")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        data = _transform(arch, gguf_name, data, config)
        array, qtype = _encode(data, gguf_type)
        yield gguf_name, array, qtype


# ---------------------------------------------------------------- tokenizer


_QWEN2_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_LLAMA3_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _pre_tokenizer_name(spec: dict) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer, or None when it is not one llama.cpp knows."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp spells the plain GPT-2 pre-tokenizer "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex == _QWEN2_REGEX:
            return "qwen2"
        if regex == _LLAMA3_REGEX:
            return "llama-bpe"
    return None


def _is_byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def _token_lists(tokenizer, spec: dict, n_vocab: int, sentencepiece: bool):
    """tokens, scores, token types (gguf.TokenType values) for ids 0..n_vocab-1."""

    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, entry in added.items():
        vocab.setdefault(content, entry["id"])
    if max(vocab.values()) >= n_vocab:
        raise DepthpruneError(f"the tokenizer has token ids up to {max(vocab.values())} but the model only "
                              f"{n_vocab} embeddings; the tokenizer does not belong to this model")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    scores = [0.0] * n_vocab
    rank = {}
    if sentencepiece:
        for r, merge in enumerate(spec["model"].get("merges", [])):
            pair = merge.split(" ", 1) if isinstance(merge, str) else merge
            rank.setdefault("".join(pair), r)
    for text, idx in vocab.items():
        tokens[idx] = text
        entry = added.get(text)
        if entry is not None:
            types[idx] = int(gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED)
            scores[idx] = -1000.0 if sentencepiece else 0.0
        elif sentencepiece and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[idx] = int(gguf.TokenType.BYTE)
        else:
            types[idx] = int(gguf.TokenType.NORMAL)
            if sentencepiece:
                scores[idx] = -float(rank[text]) if text in rank else 0.0
    unk = spec["model"].get("unk_token")
    if sentencepiece and unk in vocab:
        types[vocab[unk]] = int(gguf.TokenType.UNKNOWN)
    return tokens, scores, types


def _write_tokenizer(writer, tokenizer, n_vocab: int) -> tuple[str, str | None]:

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DepthpruneError("GGUF export needs a fast (tokenizer.json) tokenizer; this one has none")
    spec = json.loads(backend.to_str())
    if spec["model"].get("type") != "BPE":
        raise DepthpruneError(f"GGUF export supports BPE tokenizers, not '{spec['model'].get('type')}'")
    if _is_byte_level(spec):
        model_name, pre = "gpt2", _pre_tokenizer_name(spec)
        if pre is None:
            raise DepthpruneError("the tokenizer's pre-tokenizer is not one llama.cpp knows (GPT-2, SmolLM, "
                                  "Qwen2, Llama-3), so it would split text differently; GGUF export refused")
        sentencepiece = False
    elif spec["model"].get("byte_fallback"):
        model_name, pre, sentencepiece = "llama", "default", True
    else:
        raise DepthpruneError("GGUF export supports byte-level BPE and sentencepiece-style (byte fallback) "
                              "tokenizers; this one is neither")
    tokens, scores, types = _token_lists(tokenizer, spec, n_vocab, sentencepiece)
    writer.add_tokenizer_model(model_name)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if sentencepiece:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="depthprune-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=not sentencepiece, n_vocab=n_vocab)
        special.add_to_gguf(writer, quiet=True)
    if sentencepiece:
        writer.add_add_space_prefix(False)
    return model_name, pre


# ---------------------------------------------------------------- the file


def export_gguf(model, tokenizer, dest: str | Path, *, gguf_type: str = "f16", name: str | None = None) -> GGUFExport:
    """Write ``model`` (a transformers causal LM, float weights) and its tokenizer as one GGUF file at ``dest``.

    ``dest`` is a path in the writer's staging folder (:func:`depthprune.io.writer.transaction` makes it appear
    atomically, never over someone else's file).
    """
    arch = check_exportable(model, gguf_type)
    dest = Path(dest)
    if getattr(model.config, "quantization_config", None) is not None:
        raise DepthpruneError("GGUF export needs a float model, not a torchao/bitsandbytes-quantized one; "
                              "use --gguf-type q8_0 instead of --quantize")
    config = model.config
    counts: dict[str, int] = {}
    writer = gguf.GGUFWriter(dest, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or getattr(config, "_name_or_path", None) or arch)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_hparams(writer, config, arch)
    n_vocab = int(config.vocab_size)
    tok_model, pre = _write_tokenizer(writer, tokenizer, n_vocab)
    n = 0
    for gguf_name, array, qtype in _tensors(model, arch, config, gguf_type):
        writer.add_tensor(gguf_name, array, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        n += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("exported %s (%s, %d tensors)", dest, gguf_type, n)
    return GGUFExport(path=str(dest), architecture=arch, gguf_type=gguf_type,
                      block_count=int(config.num_hidden_layers), tensors=n, bytes=dest.stat().st_size,
                      tokenizer_model=tok_model, tokenizer_pre=pre, tensor_types=counts)


__all__ = ["GGUFExport", "check_exportable", "check_exportable_config", "check_gguf_type", "export_gguf"]
