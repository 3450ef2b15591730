"""A loaded checkpoint is accepted by lm-evaluation-harness' Hugging Face wrapper."""

from __future__ import annotations

import pytest
import torch

from ngc.api import compress
from ngc.checkpoint.load import load_checkpoint
from ngc.checkpoint.manifest import base_identity
from ngc.checkpoint.save import save_checkpoint
from ngc.config import CompressionConfig
from ngc.data.windows import CalibrationWindows
from ngc.models.tiny import build_tiny_model, build_tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")


def test_hflm_scores_a_compressed_checkpoint(tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = build_tiny_model("llama")
    base = base_identity(model, "tiny-llama")
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    result = compress(model, CompressionConfig(method="ngc", ratio=0.3), CalibrationWindows(tokens, "r", None, 0))
    loaded = load_checkpoint(save_checkpoint(model, build_tiny_tokenizer(), tmp_path / "ckpt", result, base))
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, max_length=64)
    requests = [
        Instance("loglikelihood", {}, ("The cat sat on the", " mat"), 0),
        Instance("loglikelihood", {}, ("The cat sat on the", " zebra"), 1),
    ]
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(scores) == 2 and all(isinstance(s[0], float) and s[0] < 0 for s in scores)
