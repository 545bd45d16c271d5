"""Is the 4-bit teacher good enough (inspect/quantization.py): the noise against a hand computation, 0 for an
unquantised teacher, on the tiny model saved and loaded both ways."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama
from sdft_lab import Example, SDFTConfig, add_student, load
from sdft_lab.inspect.quantization import line, teacher_noise
from sdft_lab.prompts import teacher_ids

EXAMPLES = [Example("What is the capital of Velmora?", "The capital of Velmora is Quillhaven.", id="a"),
            Example("Who founded Orrin?", "Orrin was founded by Tamsin Vell in 1907.", id="b")]


@pytest.fixture(scope="module")
def both(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    full, tok = load(str(folder), quantization="none", device="cpu")
    quantized, _ = load(str(folder), quantization="nf4", device="cpu")
    return full, add_student(quantized), tok


def test_noise_is_kl_full_to_4bit_by_hand_and_zero_without_quantisation(both):
    """Break it fails on (made once): the KL's direction swapped (KL(4-bit ‖ full))."""
    full, quantized, tok = both
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0)
    figures = teacher_noise(full, quantized, tok, EXAMPLES, cfg, seed=1)
    assert figures["noise"] > 0 and figures["signal"] > 0 and figures["rollouts"] == 2
    assert figures["ratio"] == pytest.approx(figures["noise"] / figures["signal"])
    # by hand, rollout by rollout: the same rollouts, each model's own logits over prompt + rollout
    from sdft_lab import SDFT

    y = SDFT(cfg).score(quantized, tok, EXAMPLES, seed=1).completions
    per_rollout = []
    for i, ex in enumerate(EXAMPLES):
        p, n = teacher_ids(tok, ex, cfg.prompts), int(y.mask[i].sum())
        ids = torch.tensor([p + y.ids[i, :n].tolist()])
        with torch.no_grad(), quantized.disable_adapter():
            lf = F.log_softmax(full(input_ids=ids).logits[0, len(p) - 1:len(p) + n - 1].float(), -1)
            lq = F.log_softmax(quantized(input_ids=ids).logits[0, len(p) - 1:len(p) + n - 1].float(), -1)
        per_rollout.append((lf.exp() * (lf - lq)).sum(-1).mean().item())
    assert figures["noise"] == pytest.approx(sum(per_rollout) / 2, rel=1e-4)
    same = teacher_noise(full, full, tok, EXAMPLES, cfg, seed=1)  # an unquantised "4-bit" teacher
    assert same["noise"] == pytest.approx(0.0, abs=1e-7) and same["verdict"] == "small"
    assert "quantisation noise" in line(figures) and figures["verdict"] in line(figures)
