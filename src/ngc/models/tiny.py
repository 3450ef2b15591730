"""Tiny random models of every supported family, built offline from a config in well under a second.

They exist for tests and examples: same module names and code paths as the real families, a 260-token
byte-level tokenizer, a few thousand parameters per layer. Never trained: their perplexity is about the
vocabulary size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from ngc.arch import ARCHS

TINY_VOCAB = 260  # 256 byte symbols + <pad> <bos> <eos> <unk>
_HIDDEN, _FFN, _HEADS, _LAYERS, _CONTEXT = 64, 128, 4, 2, 512
_SPECIAL = {"pad_token_id": 256, "bos_token_id": 257, "eos_token_id": 258}

# Field names shared by the Llama-style configs, and Gemma3's text part (used twice below).
_LLAMA_STYLE: dict[str, Any] = dict(
    hidden_size=_HIDDEN,
    intermediate_size=_FFN,
    num_hidden_layers=_LAYERS,
    num_attention_heads=_HEADS,
    max_position_embeddings=_CONTEXT,
)
# Gemma3 alternates local (sliding) and global layers, which get different masks and rotary embeddings.
_GEMMA3_TEXT: dict[str, Any] = dict(
    _LLAMA_STYLE,
    num_key_value_heads=1,
    head_dim=16,
    sliding_window=16,
    query_pre_attn_scalar=16,
    layer_types=["sliding_attention", "full_attention"],
)

# One config per family, keyed like ngc.arch.ARCHS (the only other place model types are written).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(_LLAMA_STYLE, num_key_value_heads=2),
    "mistral": dict(_LLAMA_STYLE, num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(_LLAMA_STYLE, num_key_value_heads=2),
    "qwen3": dict(_LLAMA_STYLE, num_key_value_heads=2, head_dim=16),
    "gemma3_text": _GEMMA3_TEXT,
    "gemma3": dict(
        text_config=_GEMMA3_TEXT,
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
        image_token_index=259,
        boi_token_index=254,
        eoi_token_index=255,
    ),
    "gpt2": dict(n_embd=_HIDDEN, n_inner=_FFN, n_layer=_LAYERS, n_head=_HEADS, n_positions=_CONTEXT),
    "opt": dict(
        hidden_size=_HIDDEN,
        ffn_dim=_FFN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        word_embed_proj_dim=_HIDDEN,
        max_position_embeddings=_CONTEXT,
    ),
    "gpt_neox": dict(
        hidden_size=_HIDDEN,
        intermediate_size=_FFN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        max_position_embeddings=_CONTEXT,
        rotary_pct=0.25,
    ),
}


def tiny_families() -> list[str]:
    """Model types that have both an architecture row and a tiny config."""
    return [model_type for model_type in ARCHS if model_type in TINY_CONFIGS]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token; ids 256-259 are special."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    for offset, token in enumerate(("<pad>", "<bos>", "<eos>", "<unk>")):
        vocab[token] = 256 + offset
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_model(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of ``model_type`` (float32, eval mode), deterministic for a seed."""
    if model_type not in TINY_CONFIGS:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_CONFIGS)}")
    kwargs = dict(TINY_CONFIGS[model_type])
    text_level = {"vocab_size": TINY_VOCAB, **_SPECIAL}
    if "text_config" in kwargs:  # a composite (vision-language) config: vocabulary and ids live in its text part
        kwargs["text_config"] = {**text_level, **kwargs["text_config"]}
    else:
        kwargs.update(text_level)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_tiny_model(model_type: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as an ordinary Hugging Face folder; returns the folder."""
    folder = Path(folder)
    build_tiny_model(model_type, seed).save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder
