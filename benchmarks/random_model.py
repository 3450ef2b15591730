"""Write a random-weight Llama-shaped model to disk as a Hugging Face folder of sharded bf16 safetensors.

For scaling measurements of ``ngc compress`` at real shapes (Llama-2 7B/13B/70B) without downloading weights:

    OMP_NUM_THREADS=1 python benchmarks/random_model.py llama2-7b /work/scale-models/llama2-7b
    python benchmarks/random_model.py llama2-7b /tmp/w1024-l4 --hidden 1024 --intermediate 2752 --layers 4

The folder holds ``config.json`` (a ``transformers.LlamaConfig``), ``model-0000i-of-0000n.safetensors`` shards,
``model.safetensors.index.json`` and a tokenizer. The tokenizer is a copy of the packaged SmolLM2 tokenizer
(``--tokenizer`` takes another alias or folder), and ``vocab_size`` is set to the tokenizer's length, so any
calibration text tokenizes into valid ids; the vocabulary, and so the embedding and head sizes, are therefore
SmolLM2's (49,152 rows), not Llama-2's 32,000.

Weights are initialised like the real model before training: every linear and embedding weight is normal with
std 0.02, every RMSNorm weight is one. Each tensor has its own generator, seeded from ``--seed`` and the tensor's
name, so the weights do not depend on the shard size. The shard plan is fixed from the shapes first; then each
shard's tensors are generated, written with ``safetensors.torch.save_file`` and freed, so peak memory is one shard
(at most ``--max-shard-size``) plus one tensor in float32. The folder is written under a temporary name beside
OUT and renamed when complete; a non-empty OUT is refused.

``--check`` runs every decoder layer (or the first ``--check-layers``) on random ids, one layer in memory at a
time in float32, and prints the RMS of the hidden state after each layer, to show activations stay finite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerBase

INDEX_FILE = "model.safetensors.index.json"
INIT_STD = 0.02
DTYPE = torch.bfloat16
DEFAULT_SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class Shape:
    """The sizes that fix a Llama model's tensors (the vocabulary comes from the tokenizer)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, Shape] = {
    "llama2-7b": Shape(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32),
    "llama2-13b": Shape(hidden=5120, intermediate=13824, heads=40, kv_heads=40, layers=40),
    "llama2-70b": Shape(hidden=8192, intermediate=28672, heads=64, kv_heads=8, layers=80),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: str  # "normal" (std INIT_STD) or "ones"

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * DTYPE.itemsize

    @property
    def numel(self) -> int:
        return self.nbytes // DTYPE.itemsize


def resolve_shape(
    base: str,
    layers: int | None = None,
    hidden: int | None = None,
    intermediate: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
) -> Shape:
    """``base`` with overrides. A new width keeps the base head size (128) unless ``heads`` is given, and the
    base's query heads per key/value head unless ``kv_heads`` is given."""
    if base not in SHAPES:
        raise ValueError(f"unknown shape {base!r}; use one of {', '.join(SHAPES)}")
    shape = SHAPES[base]
    group = shape.heads // shape.kv_heads
    new_hidden = hidden or shape.hidden
    if heads is None:
        if new_hidden % shape.head_dim:
            raise ValueError(f"hidden {new_hidden} is not a multiple of head size {shape.head_dim}; give --heads")
        heads = new_hidden // shape.head_dim
    if kv_heads is None:
        kv_heads = max(1, heads // group)
    result = replace(
        shape,
        hidden=new_hidden,
        intermediate=intermediate or shape.intermediate,
        heads=heads,
        kv_heads=kv_heads,
        layers=layers or shape.layers,
    )
    _check_shape(result)
    return result


def _check_shape(shape: Shape) -> None:
    for field in ("hidden", "intermediate", "heads", "kv_heads", "layers"):
        if getattr(shape, field) < 1:
            raise ValueError(f"{field} must be positive, got {getattr(shape, field)}")
    if shape.hidden % shape.heads:
        raise ValueError(f"hidden {shape.hidden} is not divisible by {shape.heads} heads")
    if shape.heads % shape.kv_heads:
        raise ValueError(f"{shape.heads} heads are not divisible by {shape.kv_heads} key/value heads")


def layer_tensors(shape: Shape, index: int) -> list[TensorSpec]:
    """The tensors of decoder layer ``index``, with Hugging Face Llama names."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim
    prefix = f"model.layers.{index}"
    return [
        TensorSpec(f"{prefix}.input_layernorm.weight", (h,), "ones"),
        TensorSpec(f"{prefix}.self_attn.q_proj.weight", (h, h), "normal"),
        TensorSpec(f"{prefix}.self_attn.k_proj.weight", (kv, h), "normal"),
        TensorSpec(f"{prefix}.self_attn.v_proj.weight", (kv, h), "normal"),
        TensorSpec(f"{prefix}.self_attn.o_proj.weight", (h, h), "normal"),
        TensorSpec(f"{prefix}.post_attention_layernorm.weight", (h,), "ones"),
        TensorSpec(f"{prefix}.mlp.gate_proj.weight", (i, h), "normal"),
        TensorSpec(f"{prefix}.mlp.up_proj.weight", (i, h), "normal"),
        TensorSpec(f"{prefix}.mlp.down_proj.weight", (h, i), "normal"),
    ]


def model_tensors(shape: Shape, vocab: int) -> list[TensorSpec]:
    """Every tensor of the model, in file order: embeddings, layers, final norm, untied head."""
    tensors = [TensorSpec("model.embed_tokens.weight", (vocab, shape.hidden), "normal")]
    for index in range(shape.layers):
        tensors += layer_tensors(shape, index)
    tensors += [
        TensorSpec("model.norm.weight", (shape.hidden,), "ones"),
        TensorSpec("lm_head.weight", (vocab, shape.hidden), "normal"),
    ]
    return tensors


def plan_shards(tensors: list[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors packed into shards of at most ``max_bytes``; a tensor larger than that is alone."""
    if max_bytes < 1:
        raise ValueError(f"shard size must be positive, got {max_bytes}")
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for tensor in tensors:
        if current and size + tensor.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += tensor.nbytes
    if current:
        shards.append(current)
    return shards


def generate(tensor: TensorSpec, seed: int) -> torch.Tensor:
    """The bf16 values of ``tensor``: the same for a seed and name wherever the tensor is written."""
    if tensor.init == "ones":
        return torch.ones(tensor.shape, dtype=DTYPE)
    # torch's CPU generator keeps 32 bits of a seed: mix seed and name into those
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{tensor.name}".encode()))
    values = torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, INIT_STD, generator=generator)
    return values.to(DTYPE)


def build_config(shape: Shape, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    return config


def load_tokenizer(source: str, cache: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a packaged alias (its converted cache folder, converted once) or of a model folder."""
    from ngc.models.packaged import PACKAGED, packaged_folder
    from ngc.settings import cache_dir

    folder = packaged_folder(source, cache_dir(cache)) if source in PACKAGED else Path(source).expanduser()
    if not folder.is_dir():
        raise ValueError(f"tokenizer source {source!r} is neither a packaged alias nor a folder")
    return AutoTokenizer.from_pretrained(folder)


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_shards(folder: Path, shards: list[list[TensorSpec]], seed: int) -> dict[str, str]:
    """Generate and write each shard in turn; returns the index's weight map."""
    weight_map: dict[str, str] = {}
    for index, shard in enumerate(shards):
        name = shard_name(index, len(shards))
        tensors = {tensor.name: generate(tensor, seed) for tensor in shard}
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        (folder / name).chmod(0o644)  # safetensors writes it private; a model folder is ordinary
        del tensors
        weight_map.update({tensor.name: name for tensor in shard})
    return weight_map


def refuse_existing(out: Path) -> None:
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; remove it or choose another folder")


def check_free_space(out: Path, needed: int) -> None:
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed * 1.05:
        raise OSError(f"{needed / 1e9:.1f} GB needed in {parent}, only {free / 1e9:.1f} GB free")


def write_model(
    out: Path,
    shape: Shape,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write the whole folder atomically; returns ``out``."""
    from ngc.atomic import atomic_folder

    out = Path(out)
    refuse_existing(out)
    tensors = model_tensors(shape, len(tokenizer))
    total = sum(tensor.nbytes for tensor in tensors)
    check_free_space(out, total)
    shards = plan_shards(tensors, max_shard_bytes)
    with atomic_folder(out) as tmp:
        weight_map = write_shards(tmp, shards, seed)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        build_config(shape, tokenizer).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def folder_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The float32 tensors whose names start with ``prefix``, read from their shards only."""
    weight_map: dict[str, str] = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if name.startswith(prefix):
            by_shard.setdefault(shard, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in by_shard.items():
        with safe_open(str(folder / shard), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name).float() for name in names})
    return tensors


def hidden_rms_per_layer(folder: Path, tokens: int = 64, layers: int | None = None, seed: int = 0) -> Iterator[float]:
    """RMS of the hidden state of one random-id sequence after the embeddings and after each decoder layer,
    loading one layer at a time in float32."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=generator)
    embeddings = folder_tensors(folder, "model.embed_tokens.")["model.embed_tokens.weight"]
    hidden = torch.nn.functional.embedding(ids, embeddings)
    del embeddings
    yield hidden.pow(2).mean().sqrt().item()
    positions = torch.arange(tokens).unsqueeze(0)
    rotary = LlamaRotaryEmbedding(config)
    position_embeddings = rotary(hidden, positions)
    with torch.no_grad():
        for index in range(layers or config.num_hidden_layers):
            layer = LlamaDecoderLayer(config, index)
            prefix = f"model.layers.{index}."
            state = {name.removeprefix(prefix): value for name, value in folder_tensors(folder, prefix).items()}
            layer.load_state_dict(state, strict=True)
            output = layer(hidden, position_embeddings=position_embeddings, position_ids=positions)
            hidden = output[0] if isinstance(output, tuple) else output
            del layer, state
            yield hidden.pow(2).mean().sqrt().item()


def parse_size(text: str) -> int:
    """``1GB``, ``500MB``, ``2GiB`` or a plain byte count."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9, "b": 1}
    lowered = text.strip().lower()
    for unit, factor in units.items():
        if lowered.endswith(unit):
            return int(float(lowered.removesuffix(unit)) * factor)
    return int(lowered)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", type=parse_size, default=DEFAULT_SHARD_BYTES, help="default 1GiB")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="packaged alias or folder (default SmolLM2)")
    parser.add_argument("--cache-dir", type=Path, help="converted-model cache (default $NGC_CACHE_DIR)")
    parser.add_argument("--check", action="store_true", help="after writing, print the hidden-state RMS per layer")
    parser.add_argument("--check-layers", type=int, help="with --check: only the first N layers")
    parser.add_argument("--check-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        shape = resolve_shape(args.shape, args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
        tokenizer = load_tokenizer(args.tokenizer, args.cache_dir)
        start = time.perf_counter()
        write_model(args.out, shape, tokenizer, args.seed, args.max_shard_size)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    seconds = time.perf_counter() - start
    on_disk = sum(path.stat().st_size for path in args.out.iterdir())
    params = sum(tensor.numel for tensor in model_tensors(shape, len(tokenizer)))
    print(
        f"wrote {args.out}: {shape}, vocab {len(tokenizer)}, {params:,} parameters, "
        f"{on_disk / 1e9:.2f} GB on disk, in {seconds:.1f} s"
    )
    if args.check:
        for index, rms in enumerate(hidden_rms_per_layer(args.out, args.check_tokens, args.check_layers)):
            label = "embeddings" if index == 0 else f"layer {index - 1}"
            print(f"hidden RMS after {label}: {rms:.4g}", flush=True)


if __name__ == "__main__":
    main()
