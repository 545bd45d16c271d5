"""Export an sdft_lab dataset and config for TRL's SDFTTrainer (`trl.experimental.sdft`, TRL 1.16).

Prototype here, then scale out with TRL (vLLM rollouts, accelerate / DeepSpeed). `export()` writes
  train.jsonl       one {"id", "prompt", "privileged_context"} per example; `prompt` is chat messages
  trl_config.json   {"sdft_config": SDFTConfig kwargs, "lora_config": peft LoraConfig kwargs, "notes": [...]}
and `load_for_trl()` turns the folder back into (trl SDFTConfig, peft LoraConfig, datasets.Dataset).

The teacher prompt. sdft_lab fills one template with {question} and {demonstration}; TRL fills its
`teacher_prompt_template` with {prompt} (the last user message) and {privileged_context}. The template
is split at {question}: the side holding {demonstration} becomes each example's privileged_context (the
rendered demonstration part), the rest stays in teacher_prompt_template. The paper's template gives
TRL's default, "{prompt}\\n\\n{privileged_context}", and the same user turn, character for character.

Lengths. TRL cuts every prompt, the teacher's included, to max_prompt_length tokens from the LEFT: too
small a limit silently removes the chat header, the system prompt and the question, and keeps the
demonstration. The export tokenizes every teacher prompt as TRL will and sets the limit to the longest.

What maps (sdft_lab → TRL SDFTConfig):
  divergence forward_kl / reverse_kl / jsd(α)  distillation_mode "full_logits", distillation_alpha 0 / 1 / α
  top_k k with top_k_side "student"            "topk_logits", distillation_topk k, distillation_add_tail True
  sampled                                      "sampled_token", distillation_alpha 1 (TRL: reverse KL only)
  teacher base / ema / live, ema_rate          teacher_model_kind, teacher_update_rate (every step)
  skip_first, max_new_tokens                   num_loss_tokens_to_skip, max_completion_length
  temperature, top_p (no top-k cut)            temperature, top_p, top_k 0
  one rollout per prompt, no importance ratio  num_generations 1, distillation_is_clip None
  TrainConfig                                  max_steps, per_device_train_batch_size, gradient_accumulation_steps,
                                               learning_rate, weight_decay, warmup_steps, max_grad_norm, seed, cosine
What does not: top_k_side "teacher" (TRL's local top-k support is the student's; an error); guided rows, the
evidence mask, sft_weight, anchor_weight and rollouts_per_prompt > 1 (NO_TRL_EQUIVALENT; an error); chunk_tokens
(TRL materialises the full [batch, length, vocab] logits), and the differences listed in NOTES.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path

from ..data import DataError, Example, load_dataset
from ..losses import DivergenceConfig
from ..models import StudentConfig
from ..prompts import chat_messages, fill, student_ids, system_of
from ..sdft import SDFTConfig
from ..trainer import TrainConfig

CONFIG_FILE, DATA_FILE = "trl_config.json", "train.jsonl"
NOTES = [
    "TRL left-truncates every prompt to max_prompt_length; it is set to the longest teacher prompt measured with "
    "this tokenizer, so nothing is cut. Re-export after changing the data, the template or the tokenizer.",
    "sdft_lab trims an over-long demonstration (never the question); TRL receives every demonstration whole.",
    "A rollout with no loss tokens counts as 0 in TRL's mean over sequences; sdft_lab leaves it out of the mean.",
    "TRL samples with model.generate or vLLM and shuffles with its own sampler: for the same seed, rollouts and "
    "batches differ from sdft_lab's.",
    "Precision and devices are not exported: pass bf16 / use_cpu and the like to SDFTConfig yourself.",
]


def split_template(template: str) -> tuple[str, str]:
    """(TRL's teacher_prompt_template, the privileged-context template that holds {demonstration})."""
    if template.count("{question}") != 1 or template.count("{demonstration}") != 1:
        raise ValueError("TRL's teacher prompt holds the prompt and the privileged context once each: the template "
                         f"must contain {{question}} and {{demonstration}} exactly once; got {template!r}.")
    before, after = template.split("{question}")
    if "{demonstration}" in after:  # question first, as in the paper's template
        sep = re.match(r"\s*", after).group()
        return _literal(before) + "{prompt}" + _literal(sep) + "{privileged_context}", after[len(sep):]
    sep = re.search(r"\s*$", before).group()
    return "{privileged_context}" + _literal(sep) + "{prompt}" + _literal(after), before[:len(before) - len(sep)]


def _literal(text: str) -> str:
    """Text that TRL's str.format leaves as it is."""
    return text.replace("{", "{{").replace("}", "}}")


def distillation(div: DivergenceConfig) -> dict:
    """TRL's distillation_* settings for an sdft_lab divergence."""
    if div.kind == "sampled":
        return {"distillation_mode": "sampled_token", "distillation_alpha": 1.0}
    alpha = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": div.alpha}[div.kind]
    if div.top_k is None:
        return {"distillation_mode": "full_logits", "distillation_alpha": alpha}
    if div.top_k_side != "student":
        raise ValueError("divergence.top_k_side='teacher' has no TRL equivalent: TRL's top-k loss takes the "
                         "student's top-k tokens as the support. Set top_k_side='student', or top_k=None for the "
                         "full vocabulary.")
    return {"distillation_mode": "topk_logits", "distillation_alpha": alpha, "distillation_topk": div.top_k,
            "distillation_add_tail": True}


def records(examples: list[Example], tokenizer, sdft: SDFTConfig) -> list[dict]:
    """TRL dataset rows; checks each question against sdft_lab's own length policy."""
    _, context = split_template(sdft.prompts.teacher_template)
    for ex in examples:
        student_ids(tokenizer, ex, sdft.prompts)  # a question over max_prompt_tokens is an error here too
    return [{"id": ex.id, "prompt": chat_messages(ex.question, system_of(ex, sdft.prompts)),
             "privileged_context": fill(context, ex.question, ex.demonstration)} for ex in examples]


def teacher_prompt_lengths(rows: list[dict], tokenizer, teacher_prompt_template: str) -> list[int]:
    """Token counts of the teacher prompts as TRL 1.16 builds them (DemonstrationTeacherContextBuilder):
    the last user turn filled into the template, then the chat template with the generation prompt."""
    if tokenizer.chat_template is None:
        raise ValueError("TRL renders chat-message prompts with the tokenizer's chat template, and this tokenizer has "
                         "none. Use an instruct model's tokenizer, or set tokenizer.chat_template first.")
    lengths = []
    for row in rows:
        user = teacher_prompt_template.format(prompt=row["prompt"][-1]["content"],
                                              privileged_context=row["privileged_context"])
        messages = row["prompt"][:-1] + [{"role": "user", "content": user}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        lengths.append(len(ids["input_ids"]))
    return lengths


# SDFTConfig options TRL's SDFTTrainer has no setting for, with their "off" values: an export would drop them
NO_TRL_EQUIVALENT = {"guided": 0.0, "evidence_mask": False, "sft_weight": 0.0, "anchor_weight": 0.0,
                     "rollouts_per_prompt": 1}


def trl_config(sdft: SDFTConfig, train: TrainConfig, teacher_prompt_template: str, max_prompt_length: int) -> dict:
    """keyword arguments for trl.experimental.sdft.SDFTConfig (add output_dir and your hardware settings)."""
    dropped = [f"{k}={getattr(sdft, k)!r}" for k, off in NO_TRL_EQUIVALENT.items() if getattr(sdft, k) != off]
    if dropped:
        raise ValueError(f"{', '.join(dropped)}: TRL's SDFTTrainer has no such setting (it samples one rollout per "
                         "prompt from the bare question and trains the divergence alone on every completion token), "
                         "so the export would train another objective. Set "
                         + ", ".join(f"{k}={off!r}" for k, off in NO_TRL_EQUIVALENT.items()) +
                         " to export, or train this one in sdft_lab.")
    return {
        **distillation(sdft.divergence),
        "teacher_model_kind": sdft.teacher, "teacher_update_rate": sdft.ema_rate, "teacher_sync_steps": 1,
        "teacher_prompt_template": teacher_prompt_template,
        "num_loss_tokens_to_skip": sdft.skip_first,
        "max_prompt_length": max_prompt_length, "max_completion_length": sdft.max_new_tokens,
        "temperature": sdft.temperature, "top_p": sdft.top_p, "top_k": 0,
        "num_generations": 1, "distillation_is_clip": None,
        "max_steps": train.steps, "per_device_train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum, "learning_rate": train.lr,
        "weight_decay": train.weight_decay, "warmup_steps": train.warmup_steps,
        "max_grad_norm": train.max_grad_norm, "lr_scheduler_type": "cosine", "seed": train.seed,
    }


def export(examples: list[Example], tokenizer, out: str | Path, sdft: SDFTConfig | None = None,
           train: TrainConfig | None = None, lora: StudentConfig | None = None) -> dict:
    """Write train.jsonl and trl_config.json into `out`; returns what trl_config.json holds."""
    sdft, train, lora = sdft or SDFTConfig(), train or TrainConfig(), lora or StudentConfig()
    template, _ = split_template(sdft.prompts.teacher_template)
    rows = records(examples, tokenizer, sdft)
    lengths = teacher_prompt_lengths(rows, tokenizer, template)
    config_kwargs = trl_config(sdft, train, template, max(lengths))
    over = [row["id"] for row, n in zip(rows, lengths) if n > sdft.prompts.max_teacher_prompt_tokens]
    if over:
        warnings.warn(f"{len(over)} teacher prompt(s) exceed max_teacher_prompt_tokens="
                      f"{sdft.prompts.max_teacher_prompt_tokens} (e.g. {over[:3]}): sdft_lab would trim their "
                      f"demonstrations, TRL gets them whole (max_prompt_length={max(lengths)}).", stacklevel=2)
    if sdft.teacher == "ema":
        warnings.warn("teacher='ema': TRL's EMA adapter starts at zero, sdft_lab's as a copy of the student, so the "
                      "two EMA teachers differ in their first steps.", stacklevel=2)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / DATA_FILE).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    config = {"sdft_config": config_kwargs,
              "lora_config": {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
                              "target_modules": lora.target_modules, "task_type": "CAUSAL_LM"},
              "teacher_prompt_lengths": {"max": max(lengths), "min": min(lengths)},
              "source": {"sdft": asdict(sdft), "train": asdict(train)}, "notes": NOTES}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1, ensure_ascii=False))
    return config


def load_for_trl(folder: str | Path, output_dir: str, **overrides):
    """(trl SDFTConfig, peft LoraConfig, datasets.Dataset) from an export; `overrides` go to SDFTConfig."""
    try:
        from trl.experimental.sdft import SDFTConfig as TRLConfig
    except ImportError as err:
        raise ImportError("load_for_trl needs TRL: `pip install -e .[trl]` (trl 1.16).") from err
    from datasets import Dataset
    from peft import LoraConfig

    folder = Path(folder)
    for name in (CONFIG_FILE, DATA_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: make the folder with sdft_lab.interop.trl.export() "
                                    "or `sdft-lab export-trl`.")
    config = json.loads((folder / CONFIG_FILE).read_text())
    rows = [json.loads(line) for line in (folder / DATA_FILE).read_text(encoding="utf-8").splitlines() if line]
    args = TRLConfig(output_dir=output_dir, **{**config["sdft_config"], **overrides})
    return args, LoraConfig(**config["lora_config"]), Dataset.from_list(rows)


def load_export(folder: str | Path) -> list[Example]:
    """The examples back from an export: TRL's rows with the privileged-context template taken off again, so
    data moves both ways (question, demonstration, system and id; answers and references stay in sdft_lab)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    _, context = split_template(config["source"]["sdft"]["prompts"]["teacher_template"])
    before, after = context.split("{demonstration}")
    examples = load_dataset(folder / DATA_FILE, format="trl")
    for ex in examples:
        text = ex.demonstration
        if not (text.startswith(before) and text.endswith(after)):
            raise DataError(f"{folder / DATA_FILE}: example {ex.id!r}: its privileged_context does not follow the "
                            "template in trl_config.json; was the file edited by hand?")
        ex.demonstration = text[len(before): len(text) - len(after)]
    return examples
