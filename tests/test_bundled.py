"""Integration tests on the bundled SmolLM2-135M-Instruct (fp32 and NF4, on the CPU)."""

import math
import statistics
from dataclasses import replace

import pytest
import torch
from peft import PeftModel

from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer, add_student, evaluate_kl, load, load_dataset, teacher_view
from sdft_lab.bundled import bundled_path, cache_is_valid
from sdft_lab.eval.knowledge import load_knowledge
from sdft_lab.inspect.preflight import CLEAR_ANSWER_LIFT, PreflightConfig, preflight, quick_check

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

PROBE = "Which city is the capital of Velmora?"


def logits_of(model, tok, text=PROBE):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits


HELD_OUT_ROLLOUTS = 6  # per held-out prompt: 24 paired values, one batch each side


@pytest.fixture(scope="module")
def trained(demo):
    """A short SDFT run on four demo questions; KL measured before and after on their held-out paraphrases
    (questions the training never sees), with rollout seeds the training never uses."""
    model, tok = load("bundled", quantization="none", device="cpu")
    model = add_student(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    examples, held_out = demo[:4], load_dataset("demo-heldout")[:4]
    assert [h.id for h in held_out] == [f"{ex.id}-h" for ex in examples]  # the same four facts, reworded
    cfg = SDFTConfig(max_new_tokens=32)
    held_out_seed = 10**6  # training seeds are cfg.seed·1000003 + i, far from this one

    def kl():
        return evaluate_kl(model, tok, held_out, cfg, seed=held_out_seed, rollouts=HELD_OUT_ROLLOUTS, batch_size=24)

    before = kl()
    trainer = Trainer(model, tok, SDFT(cfg), examples, TrainConfig(steps=8, batch_size=4, lr=1e-3),
                      preflight=quick_check)
    trainer.train()
    return model, tok, trainer, base_before, before, kl()


def test_sdft_lowers_kl_on_held_out_paraphrases(trained):
    """Two margins, both from the spread. Measured on 2026-12-01 (AMD EPYC, 2 cores): here, KL 0.347 → 0.210,
    paired per-rollout fall 0.138 ± 0.039 (se over 24 pairs, t = 3.5); in a side run with 4 rollouts per prompt
    and training seeds 1 and 2, 0.431 → 0.245 / 0.258 (t = 3.2 / 2.9 over 16 pairs). We ask for t > 2 (one-sided
    p ≈ 0.03), and for the fall to be ≥ 20 % of the start (the threshold this test had before it was loosened
    to `after < before`), which sits 1.8 standard errors inside the measured fall."""
    *_, before, after = trained
    diffs = [b - a for ex_id in before["per_rollout"]
             for b, a in zip(before["per_rollout"][ex_id], after["per_rollout"][ex_id])]
    assert len(diffs) == 4 * HELD_OUT_ROLLOUTS and not any(map(math.isnan, diffs))  # all past the skipped tokens
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    summary = f"held-out KL {before['kl']:.3f} → {after['kl']:.3f}; paired fall {mean:.3f} ± {se:.3f} (se)"
    assert mean > 2 * se, summary
    assert after["kl"] < 0.8 * before["kl"], summary


def test_train_ran_the_preflight_on_the_demo_facts(trained):
    _, _, trainer, *_ = trained
    assert trainer.preflight["verdict"] == "clear signal", trainer.preflight


def test_preflight_on_cases_its_thresholds_were_not_fitted_on(bundled, demo):
    """The thresholds were fitted on the demo facts, unrelated demonstrations and the toolcall task. Two cases
    they never saw, at the default pre-flight size (8 examples, 48 tokens). Measured on 2026-12-01 (AMD EPYC):
      invented knowledge facts (data/knowledge):        accuracy 0.00 → 0.75, clear signal
      demo questions, each given the next fact's demo:  accuracy 0.00 → 0.12, weak signal
    The second is the harder case: same island, same style, wrong fact; the divergence is as large as with
    the right demonstration (0.35), so only the answer lift can tell the two apart."""
    model, tok = bundled
    facts = load_knowledge().train
    shifted = [replace(ex, demonstration=demo[(i + 1) % len(demo)].demonstration) for i, ex in enumerate(demo)]
    (right,), (wrong,) = (preflight(model, tok, exs, cfg=PreflightConfig()) for exs in (facts, shifted))
    assert right.verdict == "clear signal", right.line()
    assert wrong.verdict != "clear signal" and wrong.answer_lift < CLEAR_ANSWER_LIFT, wrong.line()


def test_base_weights_are_bit_identical_and_the_adapter_moved(trained):
    model, _, _, base_before, *_ = trained
    named = dict(model.named_parameters())
    assert all(torch.equal(named[n], p) for n, p in base_before.items())
    assert any(p.abs().sum() > 0 for n, p in named.items() if "lora_B" in n)  # B starts at zero


def test_teacher_view_equals_the_untouched_base(trained, bundled):
    model, tok, *_ = trained
    base, _ = bundled
    with teacher_view(model, "base"):
        teacher = logits_of(model, tok)
    assert torch.equal(teacher, logits_of(base, tok))
    assert not torch.allclose(logits_of(model, tok), teacher)  # the student itself did change


def test_saved_adapter_reloads_with_peft(trained, tmp_path):
    model, tok, trainer, *_ = trained
    path = trainer.save_adapter(tmp_path / "adapter")
    assert (path / "adapter_model.safetensors").is_file()
    base, _ = load("bundled", quantization="none", device="cpu")
    reloaded = PeftModel.from_pretrained(base, path)
    assert torch.allclose(logits_of(reloaded, tok), logits_of(model, tok), atol=1e-5)


def test_nf4_on_cpu_step_save_reload(demo, tmp_path):
    model, tok = load("bundled", quantization="nf4", device="cpu")
    assert model.is_loaded_in_4bit
    model = add_student(model)
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=8, skip_first=0)), demo[:2],
                      TrainConfig(steps=1, batch_size=2, lr=1e-3))
    base_logits = logits_of(model, tok)  # B = 0: the student is the base
    record = trainer.step()
    assert torch.isfinite(torch.tensor(record["loss"])) and record["grad_norm"] > 0
    # after a step B is not zero: the student's logits move, the teacher view is still the base
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert (logits_of(model, tok) - base_logits).abs().max() > 1e-4
    with teacher_view(model):
        torch.testing.assert_close(logits_of(model, tok), base_logits, rtol=0, atol=1e-5)
    path = trainer.save_adapter(tmp_path / "nf4-adapter")
    base, _ = load("bundled", quantization="nf4", device="cpu")
    reloaded = PeftModel.from_pretrained(base, path)
    assert torch.allclose(logits_of(reloaded, tok), logits_of(model, tok), atol=1e-4)


def test_bundled_cache_is_checked_and_rebuilt(tmp_path, monkeypatch):
    """A cache whose files do not match the manifest is rebuilt, never loaded."""
    monkeypatch.setenv("SDFT_LAB_CACHE", str(tmp_path))
    path = bundled_path()
    assert cache_is_valid(path)
    with open(path / "model.safetensors", "r+b") as f:  # simulate a truncated write
        f.truncate(1000)
    assert not cache_is_valid(path)
    with pytest.warns(UserWarning, match="Rebuilding the corrupt model cache"):
        rebuilt = bundled_path()
    assert rebuilt == path and cache_is_valid(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert-")]
