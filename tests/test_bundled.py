"""Integration tests on the bundled SmolLM2-135M-Instruct (fp32 and NF4, on the CPU)."""

import pytest
import torch
from peft import PeftModel

from sdft_lab import SDFT, SDFTConfig, TrainConfig, Trainer, add_student, evaluate_kl, load, teacher_view
from sdft_lab.bundled import bundled_path, cache_is_valid
from sdft_lab.inspect.preflight import quick_check

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast

PROBE = "Which city is the capital of Velmora?"


def logits_of(model, tok, text=PROBE):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tok(text)["input_ids"]])).logits


@pytest.fixture(scope="module")
def trained(demo):
    """A short SDFT run on four demo prompts, with KL measured on held-out rollouts before and after."""
    model, tok = load("bundled", quantization="none", device="cpu")
    model = add_student(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    examples = demo[:4]
    cfg = SDFTConfig(max_new_tokens=32)
    held_out_seed = 10**6  # training seeds are cfg.seed·1000003 + i, far from this one
    before = evaluate_kl(model, tok, examples, cfg, seed=held_out_seed, rollouts=2)["kl"]
    trainer = Trainer(model, tok, SDFT(cfg), examples, TrainConfig(steps=8, batch_size=4, lr=1e-3),
                      preflight=quick_check)
    trainer.train()
    after = evaluate_kl(model, tok, examples, cfg, seed=held_out_seed, rollouts=2)["kl"]
    return model, tok, trainer, base_before, before, after


def test_sdft_lowers_kl_on_held_out_rollouts(trained):
    *_, before, after = trained
    assert after < before, f"mean per-token KL(teacher‖student) {before:.3f} → {after:.3f}"


def test_train_ran_the_preflight_on_the_demo_facts(trained):
    _, _, trainer, *_ = trained
    assert trainer.preflight["verdict"] == "clear signal", trainer.preflight


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
    record = trainer.step()
    assert torch.isfinite(torch.tensor(record["loss"])) and record["grad_norm"] > 0
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
