"""SDFT and SFT mechanics on a tiny random llama: fast checks of every moving part."""

import pytest
import torch

from sdft_lab import SDFT, SFT, Example, SDFTConfig, TrainConfig, Trainer, add_student, evaluate_kl, sample
from sdft_lab.models import EMA, STUDENT, add_ema_teacher, decoder, teacher_view
from sdft_lab.prompts import PromptConfig, student_ids
from sdft_lab.rollout import branch_hidden, completion_hidden, completions_from_ids

from conftest import tiny_llama


def base_and_adapter(model):
    named = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    adapter = {n: p.detach().clone() for n, p in named.items() if f".{STUDENT}." in n}
    return base, adapter


@pytest.mark.parametrize("objective", [SDFT(SDFTConfig(max_new_tokens=8, skip_first=0)), SFT()],
                         ids=["sdft", "sft"])
def test_one_step_updates_only_the_adapter(tiny, demo, objective):
    model, tok = tiny
    base, adapter = base_and_adapter(model)
    trainer = Trainer(model, tok, objective, demo, TrainConfig(steps=3, batch_size=2, lr=1e-2))
    record = trainer.step()
    assert torch.isfinite(torch.tensor(record["loss"])) and record["step"] == 1
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in base)  # no gradient reached the frozen base
    assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in adapter)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], base[n]) for n in base)
    assert any(not torch.equal(after[n], adapter[n]) for n in adapter)


def test_sdft_metrics_stream(tiny, demo):
    """Each record is what the step did: with forward KL the loss is the mean KL, the phases fit in the step's
    time, the learning rate is the optimizer's, the rollout length is the sampled tokens'. Breaks it fails on
    (each made once): `kl` read from the entropy statistic, and a phase timed twice (teacher_s from t0)."""
    model, tok = tiny
    seen = []
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=6)), demo,
                      TrainConfig(steps=2, batch_size=2, preflight=False), callbacks=(seen.append,))
    history = trainer.train()
    assert len(history) == 2 and seen == history
    for r in history:
        assert r["loss"] == pytest.approx(r["kl"], rel=1e-6)  # forward KL: the loss is the statistic itself
        phases = sum(r[k] for k in ("sample_s", "teacher_s", "student_fwd_s", "backward_s", "optim_s"))
        assert 0 < phases <= r["step_s"]
        assert r["entropy"] > 0 and 1 <= r["rollout_len"] <= 6 and r["grad_norm"] > 0
    # the rate set for the next step (as test_trainer has it): cosine over 2 steps, half way, then 0
    assert [r["lr"] for r in history] == [pytest.approx(trainer.cfg.lr / 2), 0.0]


def test_sft_loss_falls_when_repeating_one_example(tiny):
    model, tok = tiny
    ex = [Example(id="a", question="Name the otter.", demonstration="The glimmer otter.")]
    trainer = Trainer(model, tok, SFT(), ex, TrainConfig(steps=30, batch_size=1, lr=3e-2))
    losses = [r["loss"] for r in trainer.train()]
    assert losses[-1] < 0.5 * losses[0]


def test_sdft_lowers_kl_on_held_out_rollouts(tiny):
    model, tok = tiny
    ex = [Example(id="a", question="Name the otter.", demonstration="The glimmer otter.")]
    cfg = SDFTConfig(max_new_tokens=8, skip_first=0)
    before = evaluate_kl(model, tok, ex, cfg, seed=999, rollouts=4)["kl"]
    Trainer(model, tok, SDFT(cfg), ex, TrainConfig(steps=25, batch_size=2, lr=3e-2)).train()
    after = evaluate_kl(model, tok, ex, cfg, seed=999, rollouts=4)["kl"]
    assert after < 0.8 * before, (before, after)


def test_rollouts_are_reproducible_and_stop_at_eos(tiny, demo):
    model, tok = tiny
    prompts = [student_ids(tok, ex, PromptConfig()) for ex in demo[:3]]
    a = sample(model, tok, prompts, max_new_tokens=12, seed=7)
    b = sample(model, tok, prompts, max_new_tokens=12, seed=7)
    c = sample(model, tok, prompts, max_new_tokens=12, seed=8)
    assert torch.equal(a.ids, b.ids) and a.texts == b.texts
    assert not torch.equal(a.ids, c.ids)
    batch = completions_from_ids([[5, 6, tok.eos_token_id, 9, 9], [7]], tok, [tok.eos_token_id], tok.pad_token_id)
    assert batch.mask.tolist() == [[1, 1, 1], [1, 0, 0]] and batch.ids[0].tolist() == [5, 6, tok.eos_token_id]


def test_scoring_a_padded_batch_matches_scoring_alone(tiny):
    """Left-padded prompts and right-padded completions give the same logits as unpadded rows."""
    model, tok = tiny
    prompts = [[1, 20, 30, 40, 50, 60], [1, 70]]
    comps = completions_from_ids([[11, 12, 13, 2], [14, 2]], tok, [2], tok.pad_token_id)
    with torch.no_grad():
        batched = completion_hidden(model, prompts, comps)
        for i, (p, n) in enumerate(zip(prompts, comps.lengths.tolist())):
            full = torch.tensor([p + comps.ids[i, :n].tolist()])
            alone = decoder(model)(input_ids=full).last_hidden_state[0, len(p) - 1: len(p) + n - 1]
            assert torch.allclose(batched[i, :n], alone, atol=1e-5)


def test_completions_sharing_a_prompt_score_as_with_the_prompt_repeated(tiny):
    """branch_hidden runs each prompt once and shares its keys and values: prompts of different lengths, 1 to 3
    completions each, out of order, must give the hidden states of each completion scored after its own copy."""
    model, tok = tiny
    for p in model.parameters():  # a non-zero adapter, so that the shared prefix runs through LoRA too
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    prompts = [[1, 20, 30, 40, 50, 60], [1, 70], [1, 80, 90]]
    of = [1, 0, 1, 2, 0, 1]
    comps = completions_from_ids([[11, 12, 13, 2], [14, 2], [15], [16, 17, 18, 19, 2], [20, 21], [22, 2]], tok, [2],
                                 tok.pad_token_id)
    with torch.no_grad():
        shared = branch_hidden(model, prompts, comps, of)
        repeated = completion_hidden(model, [prompts[i] for i in of], comps)
    mask = comps.mask.bool()
    assert shared.shape == repeated.shape
    assert torch.allclose(shared[mask], repeated[mask], atol=1e-5)


def test_teacher_view_turns_the_adapter_off(tiny, tokenizer):
    model, tok = tiny
    for p in model.parameters():  # make the adapter non-zero so that it matters
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.tensor([[1, 20, 30, 40]])
    untouched = tiny_llama(tokenizer)  # the same seed builds the same base, never wrapped by peft
    with torch.no_grad():
        student = model(input_ids=ids).logits
        with teacher_view(model, "base"):
            teacher = model(input_ids=ids).logits
        plain = untouched(input_ids=ids).logits
    assert not torch.allclose(student, teacher) and torch.equal(teacher, plain)


def test_the_ema_teacher_view_scores_with_the_ema_adapter(tiny, tokenizer):
    """Not the student and not the base: a model whose only adapter holds the EMA weights gives the same logits."""
    model, tok = tiny
    add_ema_teacher(model)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            if f".{STUDENT}." in name:
                p.normal_(0, 0.5)  # the student moves away …
                named[name.replace(f".{STUDENT}.", f".{EMA}.")].copy_(p * 0.3)  # … and the EMA holds other weights
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        with teacher_view(model, "ema"):
            ema = model(input_ids=ids).logits
        student = model(input_ids=ids).logits
        reference = add_student(tiny_llama(tokenizer))  # the same LoRA settings, its adapter set to the EMA's
        ref_params = dict(reference.named_parameters())
        for name, p in named.items():
            if f".{EMA}." in name:
                ref_params[name.replace(f".{EMA}.", f".{STUDENT}.")].copy_(p)
        expected = reference(input_ids=ids).logits
    torch.testing.assert_close(ema, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(ema, student, atol=1e-3)


def test_ema_teacher_follows_the_student(tiny, demo):
    model, tok = tiny
    rate = 0.25
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=6, teacher="ema", ema_rate=rate)), demo,
                      TrainConfig(steps=2, batch_size=2, lr=1e-2))
    named = dict(model.named_parameters())
    pairs = [(n, n.replace(f".{STUDENT}.", f".{EMA}.")) for n in named if f".{STUDENT}." in n]
    assert all(torch.equal(named[s], named[e]) for s, e in pairs)  # starts as a copy
    before = {e: named[e].detach().clone() for _, e in pairs}
    trainer.step()
    for s, e in pairs:
        assert torch.allclose(named[e], (1 - rate) * before[e] + rate * named[s], atol=1e-7)
    # only the student trains, also after the teacher view switched adapters back and forth
    assert all(named[s].requires_grad and not named[e].requires_grad for s, e in pairs)
    assert set(map(id, trainer.params)) == {id(named[s]) for s, _ in pairs}


def test_batches_are_deterministic_and_cover_every_example(tiny, demo):
    model, tok = tiny
    trainer = Trainer(model, tok, SFT(), demo, TrainConfig(batch_size=4, seed=3))
    epoch = [ex.id for i in range(len(demo) // 4) for ex in trainer.batch(i)]
    assert sorted(epoch) == sorted(ex.id for ex in demo)
    assert [ex.id for ex in trainer.batch(2)] == [ex.id for ex in trainer.batch(2)]


@pytest.mark.parametrize("bad, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be ≥ 1, got 0"), (dict(temperature=0), "temperature must be > 0"),
    (dict(teacher="frozen"), "teacher must be one of"), (dict(ema_rate=0), r"ema_rate must lie in \(0, 1\]"),
    (dict(skip_first=-1), "skip_first must be ≥ 0"), (dict(top_p=1.5), r"top_p must lie in \(0, 1\]")])
def test_invalid_sdft_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        SDFTConfig(**bad)


@pytest.mark.parametrize("bad, message", [
    (dict(lr=-1e-4), "lr must be > 0, got -0.0001"), (dict(lr=0), "lr must be > 0"), (dict(steps=0), "steps must be ≥ 1"),
    (dict(batch_size=0), "batch_size must be ≥ 1"), (dict(grad_accum=0), "grad_accum must be ≥ 1")])
def test_invalid_train_configs(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer, demo):
    from conftest import tiny_llama
    from sdft_lab import StudentConfig, add_student

    grads = {}
    for gc in (False, True):
        model = add_student(tiny_llama(tokenizer), StudentConfig(gradient_checkpointing=gc))
        model.train()
        loss, _ = SDFT(SDFTConfig(max_new_tokens=8, skip_first=0)).loss(model, tokenizer, demo[:2], seed=3)
        loss.backward()
        grads[gc] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert model.get_base_model().model.gradient_checkpointing
    torch.testing.assert_close(grads[True][0], grads[False][0])
    assert grads[True][1].keys() == grads[False][1].keys() and grads[True][1]
    for n, g in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][n], g)
