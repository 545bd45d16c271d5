"""SDFT: self-distillation fine-tuning, one step read top to bottom.

Shenfeld, Damani, Hübotter, Agrawal, "Self-Distillation Enables Continual Learning"
(arXiv 2601.19897). Per batch of examples (question x, demonstration c):

  1. the student π_θ(·|x) samples a completion y (temperature 1, the full distribution);
  2. the teacher π(·|x, c), the same base with the adapter off, scores y without grad;
  3. the student scores y, with grad;
  4. per completion token, D(p_teacher ‖ p_student) over the whole vocabulary, both at the
     sampling temperature, skipping the first `skip_first` tokens (they stay in the attention);
  5. average over each sequence's tokens, then over sequences; back-propagate.

With rollouts_per_prompt = k, every question gets k rollouts in the same batch and the loss is the mean
over all of them: a lower-variance estimate of the same objective. The paper uses k = 1; on a CPU, batched
decoding makes k rollouts cost far less than k steps (bench/step_time.py measures it).

Two options from EDGE-OPD (arXiv 2605.23493), off by default. A small student rarely writes a fact it does
not know, so its own rollouts give the teacher little to correct. With `guided` > 0, that share of the rows
is sampled by the student *with* the demonstration in its prompt (the teacher's prompt); every row is still
scored by the student from the bare question, so the gradient teaches answering without the context. With
`evidence_mask`, the loss keeps only the tokens the demonstration makes more likely, log p_T(y) > log p_S(y):
the tokens where the context is evidence for what was written.

Guided rows are not the student's own, so the collapse watch (collapse.py) cannot read them: with any guided
share, `watch_rows` rollouts per step are sampled from the bare question, never trained on, and the watch's
signs (entropy, rollout length, distinct bigrams) come from those. `sft_weight` adds the cross-entropy on the
demonstration (sft.py) beside the divergence: a lever for facts the student never writes by itself.
`anchor_weight` adds β·KL(p_S ‖ p_base) per token, the frozen base (adapter off) reading the bare question
on the same tokens: an anchor to the base policy against cumulative drift, as iSDFT (arXiv 2609.24646) adds.
It is exact at each position (the whole vocabulary, no sampled estimate); on guided rows the positions are
prefixes the student wrote reading the demonstration, not its own, so there it anchors those positions only.

There is no reward model: the teacher's in-context behaviour is the target.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field, replace

import torch

from .data import Example
from .memory import clock
from .collapse import distinct2, watch
from .losses import DivergenceConfig, chunked_token_losses, loss_mask, masked_mean
from .models import TEACHER_KINDS, add_ema_teacher, ema_update, lm_head, teacher_view
from .prompts import PromptConfig, student_ids, teacher_ids
from .rollout import Completions, completion_hidden, sample
from .sft import SFT, SFTConfig


@dataclass
class SDFTConfig:
    max_new_tokens: int = 256
    temperature: float = 1.0  # the paper samples at 1.0 with top-p 1: on-policy
    top_p: float = 1.0
    engine: str = "auto"  # rollout sampler: "lean" (sampler.py), "hf" (model.generate), "auto" (rollout.sample)
    skip_first: int = 3  # the paper's code leaves the first 3 completion tokens out of the loss
    rollouts_per_prompt: int = 1  # k rollouts of each question per step, all in one batch; the paper's is 1
    guided: float = 0.0  # share of rows the student samples with the demonstration in its prompt (EDGE-OPD)
    evidence_mask: bool = False  # the loss keeps only tokens with log p_T(y) > log p_S(y)
    watch_rows: int = 2  # with guided > 0: bare rollouts per step for the collapse watch, not trained on
    sft_weight: float = 0.0  # weight of a cross-entropy term on the demonstration beside the divergence
    anchor_weight: float = 0.0  # β of the anchor β·KL(p_S ‖ p_base) on the step's rollouts, bare question
    teacher: str = "base"  # "base" (adapter off), "ema" (EMA adapter) or "live" (collapses)
    ema_rate: float = 0.01  # r in θ_T ← (1−r)·θ_T + r·θ_S, the paper's value
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for on-policy sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.skip_first < 0:
            raise ValueError(f"skip_first must be ≥ 0, got {self.skip_first}")
        if self.rollouts_per_prompt < 1:
            raise ValueError(f"rollouts_per_prompt must be ≥ 1, got {self.rollouts_per_prompt}")
        if not 0 <= self.guided <= 1:
            raise ValueError(f"guided is the share of guided rows and must lie in [0, 1], got {self.guided}")
        if self.guided > 0 and self.divergence.kind == "sampled":
            raise ValueError("divergence.kind='sampled' estimates the KL from tokens drawn from the student's own "
                             "distribution p_S(y | x); guided rows are drawn from p_S(y | x, demonstration), so the "
                             "estimate would be biased. Use guided=0 with 'sampled', or a full-vocabulary divergence "
                             "('forward_kl', 'reverse_kl', 'jsd') with guided rows.")
        if self.watch_rows < 0:
            raise ValueError(f"watch_rows must be ≥ 0 (0: no bare rollouts for the collapse watch), got {self.watch_rows}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be ≥ 0, got {self.sft_weight}")
        if self.anchor_weight < 0:
            raise ValueError(f"anchor_weight must be ≥ 0, got {self.anchor_weight}")
        if self.teacher not in TEACHER_KINDS:
            raise ValueError(f"teacher must be one of {TEACHER_KINDS}, got {self.teacher!r}")
        if not 0 < self.ema_rate <= 1:
            raise ValueError(f"ema_rate must lie in (0, 1], got {self.ema_rate}")


@dataclass
class Scored:
    """One batch of rollouts, scored by both sides."""

    completions: Completions
    per_token: torch.Tensor  # [B, T] divergence, 0 outside the loss mask
    stats: dict[str, torch.Tensor]  # [B, T] each: kl, teacher_logp, student_logp, entropy
    mask: torch.Tensor  # [B, T] loss mask: completion tokens after the skipped ones (and, with the evidence
    #                      mask, only those the demonstration makes more likely)
    eligible: torch.Tensor  # [B, T] completion tokens after the skipped ones, before the evidence mask
    guided: list[bool]  # per row: sampled with the demonstration in the student's prompt
    timings: dict[str, float]
    student_hidden: torch.Tensor  # [B, T, H] hidden states that predict each completion token …
    teacher_hidden: torch.Tensor  # … on each side: full logits when needed (inspect.diffs) are lm_head(these)


class SDFT:
    """The SDFT objective for trainer.Trainer: `loss()` runs steps 1–5 above on one batch."""

    name = "sdft"

    def __init__(self, cfg: SDFTConfig | None = None):
        self.cfg = cfg or SDFTConfig()
        self.sft = SFT(SFTConfig(prompts=self.cfg.prompts))  # the optional cross-entropy term (sft_weight)

    def setup(self, model) -> None:
        k, vocab = self.cfg.divergence.top_k, model.config.vocab_size
        if k is not None and k > vocab:
            raise ValueError(f"divergence.top_k={k} is larger than the model's vocabulary ({vocab}).")
        if self.cfg.anchor_weight and not hasattr(model, "disable_adapter"):
            raise ValueError("anchor_weight needs a student adapter to switch off for the base (add_student(model)); "
                             "a plain model is its own base, and the anchor would be 0.")
        if self.cfg.teacher == "ema":
            add_ema_teacher(model)
        if self.cfg.teacher == "live":
            warnings.warn("teacher='live' scores with the current student: known to collapse.", stacklevel=2)

    def score(self, model, tokenizer, examples: list[Example], seed: int | None = None,
              completions: Completions | None = None, demonstration: bool = True) -> Scored:
        """Steps 1–4. completions: score these rollouts instead of sampling (the pre-flight and the token
        diffs do); demonstration=False gives the teacher the bare question (how much is the context?)."""
        cfg = self.cfg
        device = next(model.parameters()).device
        guided = guided_rows(len(examples), cfg.guided if completions is None else 0.0, seed)
        s_prompts = [student_ids(tokenizer, ex, cfg.prompts) for ex in examples]
        d_prompts = [teacher_ids(tokenizer, ex, cfg.prompts) for ex in examples] if demonstration or any(guided) else []
        t_prompts = d_prompts if demonstration else s_prompts

        # 1. on-policy rollout: the student answers the bare question (guided rows: it reads the demonstration)
        t0 = clock(device)
        rollout_prompts = [d_prompts[i] if g else s_prompts[i] for i, g in enumerate(guided)]
        y = completions or sample(model, tokenizer, rollout_prompts, cfg.max_new_tokens, cfg.temperature,
                                  cfg.top_p, seed, cfg.engine)

        # 2. the teacher scores the same tokens with the demonstration in its context
        t1 = clock(device)
        with torch.no_grad(), teacher_view(model, cfg.teacher):
            t_hidden = completion_hidden(model, t_prompts, y)

        # 3. the student scores them from the bare question (with grad when enabled)
        t2 = clock(device)
        s_hidden = completion_hidden(model, s_prompts, y)

        # 4. per-token divergence over the full vocabulary, first tokens skipped
        eligible = loss_mask(y.mask, cfg.skip_first).to(device)
        per_token, stats = chunked_token_losses(
            s_hidden, t_hidden, lm_head(model), y.ids.to(device), eligible, cfg.divergence, cfg.temperature
        )
        mask = eligible
        if cfg.evidence_mask:  # only where the demonstration is evidence for the written token
            mask = eligible * (stats["teacher_logp"] > stats["student_logp"]).to(eligible.dtype)
            per_token = per_token * mask
        t3 = clock(device)
        timings = {"sample_s": t1 - t0, "teacher_s": t2 - t1, "student_fwd_s": t3 - t2}
        return Scored(y, per_token, stats, mask, eligible, guided, timings, s_hidden, t_hidden)

    def loss(self, model, tokenizer, examples: list[Example], seed: int | None = None):
        k = self.cfg.rollouts_per_prompt
        rows = [ex for ex in examples for _ in range(k)]
        scored = self.score(model, tokenizer, rows, seed)
        # 5. mean over each sequence's tokens, then over sequences (all k rollouts of every question)
        loss = masked_mean(scored.per_token, scored.mask)
        out = metrics(scored)
        if self.cfg.sft_weight:  # the expert's tokens too, off-policy, beside the on-policy divergence
            ce, _ = self.sft.loss(model, tokenizer, examples)
            loss = loss + self.cfg.sft_weight * ce
            out["sft_ce"] = ce.item()
        if self.cfg.anchor_weight:  # every eligible token, not only the evidence mask's: drift is everywhere
            t0 = clock(scored.student_hidden.device)
            anchor = masked_mean(self.anchor(model, tokenizer, rows, scored), scored.eligible)
            loss = loss + self.cfg.anchor_weight * anchor
            out.update(anchor_kl=anchor.item(), anchor_s=clock(scored.student_hidden.device) - t0)
        if any(scored.guided) and self.cfg.watch_rows:  # the rows above are not all the student's own
            out.update(watch(model, tokenizer, examples[: self.cfg.watch_rows], self.cfg, seed))
        return loss, out

    def anchor(self, model, tokenizer, examples: list[Example], scored: Scored) -> torch.Tensor:
        """[B, T] KL(p_S ‖ p_base) per eligible token: the frozen base (adapter off) reads the bare question and
        the same rollout, the student's side keeps its graph. examples: one per row of `scored`."""
        y = scored.completions
        with torch.no_grad(), teacher_view(model, "base"):
            b_hidden = completion_hidden(model, [student_ids(tokenizer, ex, self.cfg.prompts) for ex in examples], y)
        per_token, _ = chunked_token_losses(scored.student_hidden, b_hidden, lm_head(model),
                                            y.ids.to(b_hidden.device), scored.eligible,
                                            replace(self.cfg.divergence, kind="reverse_kl", top_k=None),
                                            self.cfg.temperature)
        return per_token

    def after_optimizer_step(self, model) -> None:
        if self.cfg.teacher == "ema":
            ema_update(model, self.cfg.ema_rate)


def guided_rows(n: int, share: float, seed: int | None = None) -> list[bool]:
    """Which of n rows are guided: floor(n·share) of them, spread evenly (0.5 → every second row, 1 → all),
    and, where n·share is not whole, one more with probability its fraction (drawn from the step's seed), so
    that small or odd micro-batches keep the share on average."""
    rows = [math.floor((i + 1) * share) > math.floor(i * share) for i in range(n)]
    if seed is not None and not all(rows) and random.Random(seed).random() < n * share - sum(rows):
        rows[rows.index(False)] = True
    return rows


def metrics(scored: Scored) -> dict:
    """The step's figures. The collapse watch's signs (entropy, rollout_len, distinct2) only when every row is
    the student's own; with guided rows they come from `watch`'s bare rollouts instead."""
    s, m, y = scored.stats, scored.eligible, scored.completions
    kept = scored.mask.sum() / m.sum().clamp(min=1)
    own = {} if any(scored.guided) else {
        "entropy": masked_mean(s["entropy"], m).item(), "rollout_len": y.lengths.float().mean().item(),
        "distinct2": distinct2(y)}
    return {
        "kl": masked_mean(s["kl"], m).item(),  # forward KL(teacher ‖ student), whatever the loss
        "logp_gap": masked_mean(s["teacher_logp"] - s["student_logp"], m).item(),
        **own,
        "guided_rows": sum(scored.guided),
        "kept": kept.item(),  # share of the eligible tokens the loss keeps (1 without the evidence mask)
        "sample": scored.completions.texts[0],
        "engine": scored.completions.engine,
        **scored.timings,
    }
