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
from ngc.modules.factorized import FactorizedLinear

lm_eval = pytest.importorskip("lm_eval")


def test_hflm_scores_a_compressed_checkpoint(tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = build_tiny_model("llama")
    base = base_identity(model, "tiny-llama")
    tokens = torch.randint(0, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    result = compress(model, CompressionConfig(method="ngc", ratio=0.3), CalibrationWindows(tokens, "r", None, 0))
    folder = save_checkpoint(model, build_tiny_tokenizer(), tmp_path / "ckpt", result, base)
    loaded = load_checkpoint(folder)
    requests = [
        Instance("loglikelihood", {}, ("The cat sat on the", " mat"), 0),
        Instance("loglikelihood", {}, ("The cat sat on the", " zebra"), 1),
    ]
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, max_length=64)
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    by_path = HFLM(pretrained=str(folder), batch_size=1, max_length=64, device="cpu")  # transformers' own loader
    assert isinstance(by_path.model.model.layers[0].self_attn.q_proj, FactorizedLinear)
    assert by_path.loglikelihood(requests, disable_tqdm=True) == scores
    tokenizer = build_tiny_tokenizer()
    context = len(tokenizer("The cat sat on the").input_ids)
    ids = tokenizer("The cat sat on the mat", return_tensors="pt").input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    expected = sum(logprobs[i - 1, ids[0, i]].item() for i in range(context, ids.shape[1]))
    assert scores[0][0] == pytest.approx(expected, abs=1e-4)  # the known answer: the compressed model's own score
