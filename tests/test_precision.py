"""The precision policy (sdft_lab/precision.py): the pin, the measured choice and its cache, the bf16 path
against fp32 within a stated tolerance, the checkpoint's refusal of a resume under another precision, and the
run report naming it; and its noise beside the SDFT signal (sdft_lab/inspect/precision.py)."""

import copy
import json

import pytest
import torch

from conftest import perturb_adapter, tiny_llama
from sdft_lab import SDFT, SFT, Example, SDFTConfig, TrainConfig, Trainer, add_student, checkpoint, load, precision
from sdft_lab.inspect.precision import bf16_copy, precision_noise
from sdft_lab.losses import masked_mean

EXAMPLES = [Example("What is the capital of Velmora?", "The capital of Velmora is Quillhaven.", id="a"),
            Example("Who founded Orrin?", "Orrin was founded by Tamsin Vell in 1907.", id="b")]
AVX2 = "flags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "flags\t\t: fpu sse2 avx avx2 avx512f amx_bf16 amx_tile\n"
AVX512_BF16 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """The policy unpinned, an empty cache folder, no choice of an earlier test in this process."""
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setenv("SDFT_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "CHOSEN", {})
    return tmp_path


def fake_sweep(bf16: dict[int, float]):
    """A sweep that says fp32 takes 1 s at every size and bf16 the given seconds."""
    calls = []

    def sweep(weights):
        calls.append(len(weights))
        return {"fp32": {str(r): 1.0 for r in precision.ROWS}, "bf16": {str(r): t for r, t in bf16.items()}}
    return sweep, calls


def test_the_pin_reads_the_environment_and_names_the_variable_when_wrong(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.pinned() == "auto"
    monkeypatch.setenv(precision.ENV, " BF16 ")
    assert precision.pinned() == "bf16"
    monkeypatch.setenv(precision.ENV, "fp8")
    with pytest.raises(ValueError, match="SDFT_LAB_PRECISION='fp8'.*auto, fp32, bf16"):
        precision.pinned()


def test_native_bf16_only_with_avx512_bf16_or_amx():
    """Break it fails on (made once): avx512f counted as native bf16 (it emulates bf16 through fp32)."""
    assert precision.native_bf16(AMX) and precision.native_bf16(AVX512_BF16)
    assert not precision.native_bf16(AVX2)
    assert not precision.native_bf16("flags\t\t: avx2 avx512f avx512bw\n")
    assert not precision.native_bf16("no flags line at all")


def test_load_dtype_per_device_and_pin(monkeypatch):
    monkeypatch.delenv(precision.ENV, raising=False)
    assert precision.load_dtype("cpu", quantized=False) == torch.float32  # auto: fp32, resolve() may cast later
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert precision.load_dtype("cuda:0", quantized=True) == torch.float16  # a T4: no native bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.load_dtype("cuda:0", quantized=True) == torch.bfloat16
    monkeypatch.setenv(precision.ENV, "fp32")
    assert precision.load_dtype("cuda:0", quantized=False) == torch.float32
    monkeypatch.setenv(precision.ENV, "bf16")
    assert precision.load_dtype("cpu", quantized=False) == torch.bfloat16
    with pytest.raises(ValueError, match="4-bit base there computes in fp32"):
        precision.load_dtype("cpu", quantized=True)


def test_auto_casts_to_bf16_only_where_measured_faster_at_every_size_and_keeps_the_choice(auto, tokenizer,
                                                                                         monkeypatch):
    """Breaks it fails on (each made once): bf16 chosen where it is faster at any one size (`all` → `any`);
    the margin dropped (bf16 at 0.95× chosen); the cache not read (a second process measures again); the
    model's shape left out of the cache's key; the cast applied without native bf16."""
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: True)
    slow_forward, calls = fake_sweep({16: 0.5, 256: 1.2})  # faster decoding, slower forward passes
    monkeypatch.setattr(precision, "sweep", slow_forward)
    model = tiny_llama(tokenizer)
    precision.resolve(model)
    assert precision.name(model) == "fp32" and calls == [sum(1 for _ in model.modules()
                                                              if isinstance(_, torch.nn.Linear))]
    saved = json.loads((auto / precision.FILE).read_text())
    (entry,) = next(iter(saved.values())).values()
    assert entry["choice"] == "fp32" and set(entry["seconds"]) == {"fp32", "bf16"}

    (auto / precision.FILE).unlink()
    monkeypatch.setattr(precision, "CHOSEN", {})
    near_tie, calls = fake_sweep({16: 0.95, 256: 0.95})  # faster, but within the margin: fp32 stays
    monkeypatch.setattr(precision, "sweep", near_tie)
    precision.resolve(model)
    assert precision.name(model) == "fp32" and len(calls) == 1

    (auto / precision.FILE).unlink()
    monkeypatch.setattr(precision, "CHOSEN", {})
    faster, calls = fake_sweep({16: 0.5, 256: 0.6})
    monkeypatch.setattr(precision, "sweep", faster)
    precision.resolve(model)
    assert precision.name(model) == "bf16" and len(calls) == 1
    assert precision.describe(model) == "bf16 (auto: measured faster in bf16 on this machine)"

    monkeypatch.setattr(precision, "CHOSEN", {})  # another process on the machine: the cache, no sweep
    monkeypatch.setattr(precision, "sweep", lambda weights: pytest.fail("measured again"))
    other = tiny_llama(tokenizer)
    precision.resolve(other)
    assert precision.name(other) == "bf16"
    wider, calls = fake_sweep({16: 2.0, 256: 2.0})  # another model shape: measured on its own
    monkeypatch.setattr(precision, "sweep", wider)
    bigger = tiny_llama(tokenizer)
    bigger.config.hidden_size = 64
    precision.resolve(bigger)
    assert precision.name(bigger) == "fp32" and len(calls) == 1

    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: False)  # AVX2 only: never cast
    third = tiny_llama(tokenizer)
    precision.resolve(third)
    assert precision.name(third) == "fp32"
    assert precision.describe(third) == "fp32 (auto: this CPU has no native bf16)"


def test_a_pinned_precision_is_never_measured(auto, tokenizer, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(precision, "sweep", lambda weights: pytest.fail("measured under a pin"))
    monkeypatch.setenv(precision.ENV, "fp32")
    model = tiny_llama(tokenizer)
    precision.resolve(model)
    assert precision.name(model) == "fp32" and precision.describe(model) == "fp32 (pinned by SDFT_LAB_PRECISION)"


def test_the_sweep_times_both_types_at_every_size(tokenizer):
    times = precision.sweep([m.weight for m in tiny_llama(tokenizer).modules() if isinstance(m, torch.nn.Linear)])
    assert set(times) == {"fp32", "bf16"} and all(set(t) == {str(r) for r in precision.ROWS} for t in times.values())
    assert all(s > 0 for t in times.values() for s in t.values())


def students(tokenizer, folder, monkeypatch):
    """The same perturbed student over the tiny base loaded in fp32 and in bf16 (SDFT_LAB_PRECISION pins)."""
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = []
    for pin in ("fp32", "bf16"):
        monkeypatch.setenv(precision.ENV, pin)
        out.append(perturb_adapter(add_student(load(str(folder), quantization="none", device="cpu")[0])))
    return out


# The stated tolerance of the bf16 path, on this tiny model's peaked logits: its SDFT loss within 5 % of fp32's
# on the same rollouts, and the LoRA gradient at a cosine above 0.95 (bf16 keeps 8 bits of mantissa, a
# relative rounding of 2^-9 per weight and activation; measured here 0.987). A gradient that does not flow
# through the bf16 base, or flows with a wrong sign, lands near 0 or below.
LOSS_RTOL, GRAD_COSINE = 0.05, 0.95


def test_bf16_path_matches_fp32_within_the_stated_tolerance_and_keeps_the_adapter_fp32(tokenizer, tmp_path,
                                                                                       monkeypatch):
    """Breaks it fails on (each made once): load() ignoring the pin (the base stays fp32: the same loss);
    add_student with autocast_adapter_dtype=False (the adapter and its gradient in bf16)."""
    full, half = students(tokenizer, tmp_path, monkeypatch)
    assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if "lora_" in n)
    assert all(p.dtype == torch.bfloat16 for n, p in half.named_parameters() if "lora_" not in n)
    cfg = SDFTConfig(max_new_tokens=8, skip_first=0)
    y = SDFT(cfg).score(full, tokenizer, EXAMPLES, seed=0).completions
    losses, grads = [], []
    for model in (full, half):
        model.zero_grad()
        scored = SDFT(cfg).score(model, tokenizer, EXAMPLES, completions=y)
        loss = masked_mean(scored.per_token, scored.mask)  # SDFT.loss's reduction, on these rollouts
        loss.backward()
        assert loss.dtype == torch.float32
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n]))
    assert grads[1].dtype == torch.float32
    print(f"SDFT loss fp32 {losses[0]:.5f}, bf16 {losses[1]:.5f}")
    assert losses[1] == pytest.approx(losses[0], rel=LOSS_RTOL) and losses[1] != losses[0]
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > GRAD_COSINE


def test_a_bf16_run_learns_its_targets(tokenizer, demo):
    """SFT on a bf16 base with an fp32 adapter and fp32 AdamW moments: the loss falls by a third in 8 steps.
    Break it fails on (made once): add_student with autocast_adapter_dtype=False (bf16 moments)."""
    model = add_student(tiny_llama(tokenizer).to(torch.bfloat16))
    trainer = Trainer(model, tokenizer, SFT(), demo[:4], TrainConfig(steps=8, batch_size=4, lr=3e-2, warmup_steps=0,
                                                                    report=False))
    history = trainer.train()
    assert history[-1]["loss"] < 0.67 * history[0]["loss"]
    moments = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim()]
    assert moments and all(t.dtype == torch.float32 for t in moments)


def test_a_resume_under_another_precision_is_refused(tokenizer, demo, tmp_path, monkeypatch):
    """Break it fails on (made once): the precision left out of state.json (the bf16 resume goes through)."""
    full, half = students(tokenizer, tmp_path / "model", monkeypatch)
    trainer = Trainer(full, tokenizer, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, report=False))
    trainer.step()
    path = trainer.save_checkpoint(tmp_path / "checkpoints")
    assert json.loads((path / checkpoint.FILES[2]).read_text())["precision"] == "fp32"
    other = Trainer(half, tokenizer, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, report=False))
    before = {n: p.clone() for n, p in half.named_parameters() if "lora_" in n}
    with pytest.raises(ValueError, match="computed in fp32; this model computes in bf16.*SDFT_LAB_PRECISION=fp32"):
        other.resume(path)
    assert all(torch.equal(p, before[n]) for n, p in half.named_parameters() if "lora_" in n)  # nothing loaded
    same = Trainer(add_student(tiny_llama(tokenizer)), tokenizer, SFT(), demo[:2],
                   TrainConfig(steps=1, batch_size=2, report=False))
    assert same.resume(path) == 1
    state = json.loads((path / checkpoint.FILES[2]).read_text())
    del state["precision"]  # a checkpoint written before the policy: on the CPU it computed fp32
    (path / checkpoint.FILES[2]).write_text(json.dumps(state))
    assert same.resume(path) == 1
    with pytest.raises(ValueError, match="computed in fp32; this model computes in bf16"):
        other.resume(path)
    assert precision.resume_hint("fp16").startswith("resume where the base computes in fp16")  # no such pin


def test_the_run_report_names_the_precision_and_times_each_evaluation(tiny, demo, tmp_path):
    """Breaks it fails on (each made once): the callback's time not added up; the precision left out of
    run.json."""
    model, tok = tiny
    seen = []

    class Probe:
        name = "a probe"

        def __call__(self, record):
            seen.append(record["step"])
            torch.ones(10_000).cumsum(0)

    trainer = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=2, batch_size=2, run_dir=str(tmp_path)),
                      callbacks=(Probe(),))
    trainer.train()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["precision"] == "fp32 (as given: not loaded by sdft_lab.load)"  # a model built by the test
    assert seen == [1, 2] and set(run["evaluations_s"]) == {"a probe"} and run["evaluations_s"]["a probe"] > 0
    page = (tmp_path / "report.md").read_text()
    assert "precision of the base" in page and "time in a probe" in page


def test_the_bf16_copy_casts_the_base_and_keeps_the_adapter(tokenizer):
    full = perturb_adapter(add_student(tiny_llama(tokenizer)))
    half = bf16_copy(full)
    assert all((p.dtype == torch.float32) == ("lora_" in n) for n, p in half.named_parameters())
    assert all(p.dtype == torch.float32 for p in full.parameters())  # the original untouched


def test_precision_noise_is_zero_for_an_exact_copy_and_the_teacher_side_reads_the_base(tokenizer):
    """Breaks it fails on (each made once): the teacher noise measured with the adapters on (it then
    equals a student-side noise); the signal taken from the bf16 model's scoring."""
    full = perturb_adapter(add_student(tiny_llama(tokenizer)))
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0)
    exact = precision_noise(full, copy.deepcopy(full), tokenizer, EXAMPLES, cfg, seed=1)
    assert exact["sampling"] == pytest.approx(0, abs=1e-6) and exact["teacher"] == pytest.approx(0, abs=1e-6)
    assert exact["signal"] > 0 and exact["rollouts"] == 2
    other = copy.deepcopy(full)  # another adapter over the same fp32 base: the teacher (adapter off) is the same
    perturb_adapter(other, seed=7)
    moved = precision_noise(full, other, tokenizer, EXAMPLES, cfg, seed=1)
    assert moved["sampling"] > 1e-3 and moved["teacher"] == pytest.approx(0, abs=1e-6)
    assert moved["signal"] == pytest.approx(exact["signal"])
    rounded = precision_noise(full, bf16_copy(full), tokenizer, EXAMPLES, cfg, seed=1)
    assert rounded["sampling"] > 0 and rounded["teacher"] > 0
    assert rounded["teacher_ratio"] == pytest.approx(rounded["teacher"] / rounded["signal"])
    assert rounded["sampling_verdict"] in ("small", "notable", "large")
    # by hand: KL(fp32 ‖ bf16) per token over the teacher's prompt, from both models' full logits
    from sdft_lab.models import teacher_view
    from sdft_lab.prompts import teacher_ids
    from sdft_lab.rollout import completion_hidden
    y = SDFT(cfg).score(full, tokenizer, EXAMPLES, seed=1).completions
    half = bf16_copy(full)
    prompts = [teacher_ids(tokenizer, ex, cfg.prompts) for ex in EXAMPLES]
    with torch.no_grad(), teacher_view(full, "base"), teacher_view(half, "base"):
        p, q = (torch.log_softmax(m.get_output_embeddings()(completion_hidden(m, prompts, y)).float(), -1)
                for m in (full, half))
    kl = (p.exp() * (p - q)).sum(-1) * y.mask
    by_hand = ((kl.sum(-1) / y.mask.sum(-1)).mean()).item()
    assert rounded["teacher"] == pytest.approx(by_hand, rel=1e-4)


def test_load_records_why_the_base_computes_in_its_type(tokenizer, tmp_path, monkeypatch):
    """The policy's cast is the pinned load's model: parameters in bf16, the rotary frequencies in fp32 as
    from_pretrained(dtype=bf16) keeps them, the same logits. Breaks it fails on (each made once): the cast
    by model.to(bf16) (it rounds the rotary buffers too); describe() without load's reason."""
    tiny_llama(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    monkeypatch.setenv(precision.ENV, "bf16")
    pinned, _ = load(str(tmp_path), quantization="none", device="cpu")
    assert precision.describe(pinned) == "bf16 (pinned by SDFT_LAB_PRECISION)"
    monkeypatch.delenv(precision.ENV)
    monkeypatch.setenv("SDFT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "CHOSEN", {})
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(precision, "sweep", fake_sweep({16: 0.5, 256: 0.5})[0])
    measured, _ = load(str(tmp_path), quantization="none", device="cpu")
    assert precision.describe(measured) == "bf16 (auto: measured faster in bf16 on this machine)"
    dtypes = [{n: b.dtype for n, b in m.named_buffers()} for m in (pinned, measured)]
    assert dtypes[0] == dtypes[1] and torch.float32 in dtypes[0].values()  # the rotary frequencies
    assert all(p.dtype == torch.bfloat16 for p in measured.parameters())
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(pinned(ids).logits, measured(ids).logits)
    quantized = tiny_llama(tokenizer)  # what load() records for a 4-bit base on the CPU, without bitsandbytes
    precision.resolve(quantized, quantized=True)
    assert precision.describe(quantized) == "fp32 (a 4-bit base on the CPU computes in fp32)"
