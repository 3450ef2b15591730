"""Write a tiny Llama model as a float32 GGUF file, the way llama.cpp lays it out (for offline GGUF tests)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer

_LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _rotary_permute(W: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face q/k rows -> GGUF's interleaved rotary layout (transformers undoes this on load)."""
    return W.reshape(n_heads, 2, W.shape[0] // n_heads // 2, *W.shape[1:]).swapaxes(1, 2).reshape(W.shape)


def write_tiny_llama_gguf(path: Path, seed: int = 0):
    """Write the tiny Llama of ``seed`` to ``path``; returns (model, tokenizer) it was written from."""
    model, tokenizer = build_tiny_model("llama", seed), build_tiny_tokenizer()
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if index >= 256 else 1 for _, index in vocab])  # 3 = control (special)
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_token_merges([])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    state = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in _LAYER_TENSORS.items():
            W = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                W = _rotary_permute(W, config.num_attention_heads)
            elif gguf_name == "attn_k":
                W = _rotary_permute(W, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", np.ascontiguousarray(W))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model, tokenizer
