"""Export to TRL's SDFTTrainer: template split, config mapping, and one real TRL step on the tiny llama."""

import json
import math
import warnings
from dataclasses import replace

import pytest
import torch

from sdft_lab import DivergenceConfig, PromptConfig, SDFTConfig, TrainConfig
from sdft_lab.prompts import TEMPLATES
from sdft_lab.prompts import fill, teacher_ids
from sdft_lab.interop.trl import distillation, export, load_for_trl, split_template

from conftest import tiny_llama


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trl_rebuilds_the_teacher_user_turn_character_for_character(name):
    trl_template, context = split_template(TEMPLATES[name])
    q, d = "What is {x} in Velmora?", "It is {y}, as}{ the records say."  # braces must survive str.format
    assert trl_template.format(prompt=q, privileged_context=fill(context, q, d)) == fill(TEMPLATES[name], q, d)
    assert "{demonstration}" in context and "{question}" not in context


def test_the_paper_template_is_trls_default():
    trl_template, context = split_template(TEMPLATES["paper"])
    assert trl_template == "{prompt}\n\n{privileged_context}"
    assert context.startswith("This is an example for a response to the question:\n{demonstration}")


def test_templates_trl_cannot_express_are_refused():
    with pytest.raises(ValueError, match="exactly once"):
        split_template("{demonstration}\n{question}\n{demonstration}")


@pytest.mark.parametrize("div, expected", [
    (DivergenceConfig(), {"distillation_mode": "full_logits", "distillation_alpha": 0.0}),
    (DivergenceConfig(kind="reverse_kl"), {"distillation_mode": "full_logits", "distillation_alpha": 1.0}),
    (DivergenceConfig(kind="jsd", alpha=0.3), {"distillation_mode": "full_logits", "distillation_alpha": 0.3}),
    (DivergenceConfig(kind="sampled"), {"distillation_mode": "sampled_token", "distillation_alpha": 1.0}),
    (DivergenceConfig(top_k=20, top_k_side="student"),
     {"distillation_mode": "topk_logits", "distillation_alpha": 0.0, "distillation_topk": 20,
      "distillation_add_tail": True}),
])
def test_divergence_mapping(div, expected):
    assert distillation(div) == expected


def test_teacher_side_top_k_has_no_trl_equivalent():
    with pytest.raises(ValueError, match="top_k_side='student'"):
        distillation(DivergenceConfig(top_k=20, top_k_side="teacher"))


@pytest.mark.parametrize("option", [{"guided": 1.0}, {"evidence_mask": True}, {"sft_weight": 0.1},
                                    {"anchor_weight": 0.25}, {"rollouts_per_prompt": 2}])
def test_options_trl_cannot_express_are_refused_not_dropped(tokenizer, demo, tmp_path, option):
    """Each SDFTConfig option TRL's trainer has no setting for stops the export with its name: fails if any of
    them is silently left out of trl_config.json (the export would train another objective). Nothing written."""
    (name, _), = option.items()
    with pytest.raises(ValueError, match=name):
        export(demo[:2], tokenizer, tmp_path / "out", SDFTConfig(**option))
    assert not (tmp_path / "out").exists()


def test_export_measures_the_teacher_prompts_and_sets_the_limit(tokenizer, demo, tmp_path):
    sdft = SDFTConfig(max_new_tokens=16, skip_first=2, teacher="live", prompts=PromptConfig(system="Be brief."))
    config = export(demo, tokenizer, tmp_path, sdft, TrainConfig(steps=7, batch_size=2, lr=3e-4))
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in demo]
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": demo[0].question}]
    longest = max(len(teacher_ids(tokenizer, ex, sdft.prompts)) for ex in demo)
    kwargs = config["sdft_config"]
    assert kwargs["max_prompt_length"] == longest == config["teacher_prompt_lengths"]["max"]
    assert (kwargs["num_loss_tokens_to_skip"], kwargs["max_completion_length"], kwargs["teacher_model_kind"],
            kwargs["max_steps"], kwargs["learning_rate"], kwargs["num_generations"]) == (2, 16, "live", 7, 3e-4, 1)
    assert json.loads((tmp_path / "trl_config.json").read_text()) == config


def test_export_warns_where_trl_would_differ(tokenizer, demo, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both divide the loss logits by the temperature now: nothing to warn about
        config = export(demo[:2], tokenizer, tmp_path, SDFTConfig(temperature=0.7))
    assert config["sdft_config"]["temperature"] == 0.7
    with pytest.warns(UserWarning, match="would trim their demonstrations"):
        export(demo[:2], tokenizer, tmp_path, SDFTConfig(prompts=PromptConfig(max_teacher_prompt_tokens=40)))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers deprecations raised inside TRL
def test_trl_sdft_trainer_runs_one_step_on_the_export(tokenizer, demo, tmp_path):
    sdft_module = pytest.importorskip("trl.experimental.sdft",
                                      reason="TRL is an optional test dependency: pip install -e .[trl]")
    sdft = SDFTConfig(max_new_tokens=8)
    export(demo, tokenizer, tmp_path / "export", sdft, TrainConfig(steps=1, batch_size=2, lr=1e-2))
    args, lora, dataset = load_for_trl(tmp_path / "export", str(tmp_path / "trl"), use_cpu=True, bf16=False,
                                       report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = sdft_module.SDFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=dataset,
                                      processing_class=tokenizer, peft_config=lora)

    # TRL builds exactly sdft_lab's teacher prompt from the exported row, and cuts nothing from it
    for row, ex in zip(dataset, demo):
        composed = trainer.teacher_context_builder._compose_teacher_prompt(row["prompt"], row["privileged_context"])
        assert trainer._tokenize_prompts([composed])[0] == teacher_ids(tokenizer, ex, sdft.prompts)
    # why the limit is measured: below it, TRL keeps the tail and drops the chat header and the question
    row, ex = max(zip(dataset, demo), key=lambda pair: len(teacher_ids(tokenizer, pair[1], sdft.prompts)))
    limit = args.max_prompt_length
    trainer.max_prompt_length = limit - 8
    cut = trainer._tokenize_prompts([trainer.teacher_context_builder._compose_teacher_prompt(
        row["prompt"], row["privileged_context"])])[0]
    assert len(cut) == limit - 8 and cut == teacher_ids(tokenizer, ex, sdft.prompts)[8:]
    trainer.max_prompt_length = limit

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[n], b) for n, b in before.items())  # the adapter moved


def test_an_export_loads_back_into_the_same_examples(tokenizer, demo, tmp_path):
    from sdft_lab.interop.trl import load_export

    examples = [replace(ex, system="Answer briefly.") if i == 0 else ex for i, ex in enumerate(demo[:4])]
    export(examples, tokenizer, tmp_path, SDFTConfig(max_new_tokens=8))
    back = load_export(tmp_path)
    assert [(e.id, e.question, e.demonstration, e.system) for e in back] == \
        [(e.id, e.question, e.demonstration, e.system) for e in examples]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_trl_and_sdft_lab_compute_the_same_loss_on_the_same_rollouts(tokenizer, demo, tmp_path, kind):
    """Same model, same exported config, same rollouts: TRL's SDFTTrainer.compute_loss equals sdft_lab's loss.
    Covers prompt building, the skipped first tokens, the loss temperature and the per-sequence mean."""
    sdft_module = pytest.importorskip("trl.experimental.sdft",
                                      reason="TRL is an optional test dependency: pip install -e .[trl]")
    from sdft_lab import SDFT
    from sdft_lab.losses import masked_mean
    from sdft_lab.prompts import student_ids
    from sdft_lab.rollout import sample

    examples = demo[:3]
    sdft = SDFTConfig(max_new_tokens=12, skip_first=2, temperature=0.7, divergence=DivergenceConfig(kind=kind))
    export(examples, tokenizer, tmp_path / "export", sdft, TrainConfig(steps=1, batch_size=3, lr=1e-2))
    args, lora, dataset = load_for_trl(tmp_path / "export", str(tmp_path / "trl"), use_cpu=True, bf16=False,
                                       report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = sdft_module.SDFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=dataset,
                                      processing_class=tokenizer, peft_config=lora)
    model = trainer.model.eval()  # no LoRA dropout: both sides see the same function
    with torch.no_grad():  # a student that differs from its teacher (LoRA B starts at zero)
        g = torch.Generator().manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    prompts = [student_ids(tokenizer, ex, sdft.prompts) for ex in examples]
    y = sample(model, tokenizer, prompts, sdft.max_new_tokens, sdft.temperature, seed=0)
    rollouts = [ids[m.bool()].tolist() for ids, m in zip(y.ids, y.mask)]
    # TRL counts a sequence with no token left after the skip as 0, sdft_lab leaves it out: keep them all in
    assert all(len(r) > sdft.skip_first for r in rollouts)
    trainer._generate = lambda prompt_ids: (prompt_ids, rollouts)  # TRL scores our rollouts instead of its own

    batch = trainer._prepare_training_batch(list(dataset))
    assert [row[m.bool()].tolist() for row, m in zip(batch["prompt_ids"], batch["prompt_mask"])] == prompts
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
        scored = SDFT(sdft).score(model, tokenizer, examples, completions=y)
        ours = masked_mean(scored.per_token, scored.mask)
    assert trl_loss.item() > 0.01  # the two sides do differ
    torch.testing.assert_close(ours, trl_loss, rtol=1e-4, atol=1e-6)
