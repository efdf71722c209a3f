"""Tiny random-weight models (one per architecture family) and an offline tokenizer, for unit tests."""

from __future__ import annotations

import functools

import torch
import transformers as tf

VOCAB = 128
COMMON = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **COMMON)

# family -> (config factory, dotted path of the final norm, which output_hidden_states may include)
ARCHS = {
    "llama": (lambda: tf.LlamaConfig(**LLAMA_LIKE), "model.norm"),
    "mistral": (lambda: tf.MistralConfig(**LLAMA_LIKE, sliding_window=8), "model.norm"),
    "qwen2": (lambda: tf.Qwen2Config(**LLAMA_LIKE), "model.norm"),
    "qwen3": (lambda: tf.Qwen3Config(**LLAMA_LIKE, head_dim=8), "model.norm"),
    "gemma2": (lambda: tf.Gemma2Config(**LLAMA_LIKE, head_dim=8, sliding_window=4), "model.norm"),
    "gemma3": (lambda: tf.Gemma3TextConfig(
        **{**LLAMA_LIKE, "num_hidden_layers": 6}, head_dim=8, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention", "sliding_attention", "full_attention"]), "model.norm"),
    "phi3": (lambda: tf.Phi3Config(**LLAMA_LIKE), "model.norm"),
    "gpt2": (lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=256, **COMMON),
             "transformer.ln_f"),
    "gpt_neox": (lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                          num_attention_heads=4, intermediate_size=64,
                                          max_position_embeddings=256, **COMMON), "gpt_neox.final_layer_norm"),
    "opt": (lambda: tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, ffn_dim=64,
                                 num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256,
                                 **COMMON), "model.decoder.final_layer_norm"),
    "falcon": (lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                       num_attention_heads=4, **COMMON), "transformer.ln_f"),
    "mixtral": (lambda: tf.MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2), "model.norm"),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    config = ARCHS[family][0]()
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config)
    # Random init gives near-identical layers; scale weights up a little so layers differ visibly.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return model.eval()


def final_norm(model: torch.nn.Module, family: str) -> tuple[torch.nn.Module, str, str]:
    path = ARCHS[family][1]
    parent_path, _, name = path.rpartition(".")
    parent = functools.reduce(getattr, parent_path.split("."), model)
    return parent, name, path


def batch(seed: int = 0, n: int = 3, t: int = 12, pad_last: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids in [3, VOCAB) and a right-padded mask (the last row has ``pad_last`` pad positions)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
        ids[-1, -pad_last:] = 0
    return ids, mask


@functools.lru_cache(maxsize=1)
def tiny_tokenizer_files() -> dict:
    """A byte-level BPE trained offline on builtin text (no Hub access needed)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB * 4, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([topics[k] for k in sorted(topics)[:40]], trainer=trainer)
    return {"json": tok.to_str()}


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tiny_tokenizer_files()["json"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_checkpoint(path, family: str = "llama", num_layers: int = 6) -> str:
    """Save a tiny model whose vocabulary matches :func:`tiny_tokenizer`, with that tokenizer."""
    tokenizer = tiny_tokenizer()
    config = ARCHS[family][0]()
    config.vocab_size = len(tokenizer)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = (config.layer_types * num_layers)[:num_layers]
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
