"""Is the 4-bit teacher good enough (inspect/quantization.py): the noise against a hand computation, 0 for an
unquantised teacher, on the tiny model saved and loaded both ways."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama
from sdft_lab import SDFT, Example, SDFTConfig, add_student, load
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


def test_noise_is_measured_on_the_students_own_rollouts_whatever_the_guided_share(both):
    """Fails if teacher_noise keeps guided rows: its `replace(cfg or SDFTConfig(), guided=0.0, teacher="base")`
    without `guided=0.0`, so a training config with guided > 0 would measure noise and signal on rollouts
    sampled with the demonstration in the student's prompt.

    teacher_noise under guided=0.5 and 1.0 gives the same figures as under guided=0.0 for the same seed."""
    full, quantized, tok = both
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0)
    own = teacher_noise(full, quantized, tok, EXAMPLES, cfg, seed=1)
    for share in (0.5, 1.0):
        assert teacher_noise(full, quantized, tok, EXAMPLES, replace(cfg, guided=share), seed=1) == own
    # the guided rollouts are other rollouts, with another signal: the equality above is not vacuous
    plain = SDFT(cfg).score(quantized, tok, EXAMPLES, seed=1)
    guided = SDFT(replace(cfg, guided=1.0)).score(quantized, tok, EXAMPLES, seed=1)
    assert not torch.equal(plain.completions.ids, guided.completions.ids)
    per_rollout = [plain.stats["kl"][i][plain.completions.mask[i].bool()].mean().item() for i in range(2)]
    assert own["signal"] == pytest.approx(sum(per_rollout) / 2, rel=1e-5)  # the signal on the student's own
