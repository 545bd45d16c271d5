"""Pre-flight: will SDFT work for this model, data and teacher template?

SDFT can only move the student toward what the teacher does, and the teacher is
the same model with a demonstration in its context. If the model cannot use that
context, training runs for minutes and teaches nothing. Before training, on a
small sample of examples, we measure per template:

  answers     greedy answers without (student) and with (teacher) the demonstration,
              scored by a task scorer: the accuracy of each and the lift;
  reference   mean per-token log-prob of a *second* reference answer (one the teacher
              does not see: copying the demonstration proves nothing) under each side;
  signal      mean per-token divergence between teacher and student on student rollouts.

    python -m sdft_lab.inspect.preflight --data demo --templates paper reference context-first
"""

from __future__ import annotations

import argparse
import random
import statistics
import textwrap
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..data import Example, load_dataset
from ..eval import SCORERS, contains_answer
from ..losses import sequence_means
from ..models import teacher_view
from ..prompts import PAPER_TEMPLATE, TEMPLATES, encode, student_ids, teacher_ids
from ..rollout import completions_from_ids, end_of_turn_id, greedy_texts, mean_logp, sample
from ..sdft import SDFT, SDFTConfig

# Verdict thresholds. Lifts are teacher minus student; log-probs are in nats per token.
# Measured on the bundled 135M model on 2026-11-23 (README, "Will SDFT work for my model?"), 8 examples:
#   demo facts in context:      answer lift +0.88…+1.00, reference lift +0.80…+0.90
#   unrelated demonstrations:   answer lift 0, reference lift −0.20…−0.06
#   toolcall format task:       answer lift 0 (0/8 teacher answers in the format), reference lift +1.9…+2.2
# The toolcall row is why the answer lift decides whenever a scorer exists: the second reference shares
# the demonstration's format and arguments, so the teacher finds it likely by near-copying, while its own
# answers never use the format; SDFT distills what the teacher does, not what it finds likely.
CLEAR_ANSWER_LIFT = 0.25  # teacher accuracy − student accuracy
WEAK_ANSWER_LIFT = 0.10
CLEAR_REF_LIFT = 0.50  # teacher − student mean log p(unseen reference); used only without a scorer
WEAK_REF_LIFT = 0.15
MIN_SIGNAL = 0.02  # mean per-token divergence below which there is nothing to distill

ADVICE = {
    "clear signal": "The teacher uses the demonstrations: SDFT has something to distill.",
    "weak signal": "The teacher gains little from the demonstrations: compare templates (compare_templates), "
                   "write clearer demonstrations, or use a larger model.",
    "no signal": "The teacher does no better with the demonstrations than without, so SDFT would teach "
                 "nothing: use a larger model (the paper gained from 7B up), another template, or SFT.",
}

Scorer = Callable[[Example, str], float]


@dataclass
class PreflightConfig:
    sample_size: int = 8  # examples measured; 8 takes < 1 minute per template on 2 CPU cores
    max_new_tokens: int = 48  # for the greedy answers and the rollouts
    seed: int = 0
    sdft: SDFTConfig | None = None  # divergence, skip_first, teacher kind and prompts of the run


@dataclass
class TemplateResult:
    name: str
    n: int
    teacher_accuracy: float | None
    student_accuracy: float | None
    teacher_ref_logp: float | None  # None when no example has a second reference
    student_ref_logp: float | None
    signal_mean: float
    signal_std: float
    verdict: str
    advice: str

    @property
    def answer_lift(self) -> float | None:
        return None if self.teacher_accuracy is None else self.teacher_accuracy - self.student_accuracy

    @property
    def ref_lift(self) -> float | None:
        return None if self.teacher_ref_logp is None else self.teacher_ref_logp - self.student_ref_logp

    def line(self) -> str:
        acc = "n/a" if self.answer_lift is None else f"{self.student_accuracy:.2f} → {self.teacher_accuracy:.2f}"
        ref = "n/a (no second reference)" if self.ref_lift is None else f"{self.ref_lift:+.2f} nats/token"
        return (f"pre-flight [{self.name}] {self.verdict.upper()}: accuracy student → teacher {acc}; "
                f"reference log-prob lift {ref}; signal {self.signal_mean:.3f} ± {self.signal_std:.3f}")


def verdict(answer_lift: float | None, ref_lift: float | None, signal: float) -> str:
    """The written-down rule. The answer lift decides when there is a scorer, else the reference lift."""
    if signal < MIN_SIGNAL:
        return "no signal"
    if answer_lift is not None:
        lift, clear, weak = answer_lift, CLEAR_ANSWER_LIFT, WEAK_ANSWER_LIFT
    elif ref_lift is not None:
        lift, clear, weak = ref_lift, CLEAR_REF_LIFT, WEAK_REF_LIFT
    else:
        return "weak signal"  # the teacher differs, but nothing shows that it is better
    return "clear signal" if lift >= clear else "weak signal" if lift >= weak else "no signal"


def greedy_answers(model, tokenizer, examples: list[Example], cfg: SDFTConfig, max_new_tokens: int,
                   teacher: bool = False) -> list[str]:
    """Greedy answers of the student (bare question) or of the teacher (question + demonstration)."""
    if not teacher:
        return greedy_texts(model, tokenizer, [student_ids(tokenizer, ex, cfg.prompts) for ex in examples],
                            max_new_tokens)
    with teacher_view(model, cfg.teacher):
        return greedy_texts(model, tokenizer, [teacher_ids(tokenizer, ex, cfg.prompts) for ex in examples],
                            max_new_tokens)


@torch.no_grad()
def reference_logp(model, tokenizer, prompts: list[list[int]], texts: list[str]) -> float:
    """Mean over texts of the mean per-token log-prob of each text (plus EOS) after its prompt."""
    eos = end_of_turn_id(model, tokenizer)
    y = completions_from_ids([encode(tokenizer, t) + [eos] for t in texts], tokenizer, [eos], tokenizer.pad_token_id)
    return mean_logp(model, prompts, y).mean().item()


@torch.no_grad()
def preflight(
    model,
    tokenizer,
    examples: list[Example],
    templates: dict[str, str] | None = None,
    scorer: Scorer | None = None,
    cfg: PreflightConfig | None = None,
) -> list[TemplateResult]:
    """Measure, per teacher template, how much the demonstration helps the teacher (see module doc)."""
    cfg = cfg or PreflightConfig()
    sdft = cfg.sdft or SDFTConfig()
    if templates is None:
        template = sdft.prompts.teacher_template
        templates = {"paper" if template == PAPER_TEMPLATE else "configured": template}
    exs = random.Random(cfg.seed).sample(examples, min(cfg.sample_size, len(examples)))
    if scorer is None and all(ex.answer for ex in exs):  # default: the short answer appears
        scorer = contains_answer
    # The student's side does not depend on the template: measure it once.
    s_prompts = [student_ids(tokenizer, ex, sdft.prompts) for ex in exs]
    if scorer:
        s_answers = greedy_answers(model, tokenizer, exs, sdft, cfg.max_new_tokens)
        student_acc = statistics.fmean(scorer(ex, a) for ex, a in zip(exs, s_answers))
    with_ref = [i for i, ex in enumerate(exs) if ex.references]
    refs = [exs[i].references[0] for i in with_ref]
    student_ref = reference_logp(model, tokenizer, [s_prompts[i] for i in with_ref], refs) if refs else None
    y = sample(model, tokenizer, s_prompts, cfg.max_new_tokens, sdft.temperature, sdft.top_p, cfg.seed, sdft.engine)

    results = []
    for name, template in templates.items():
        run = replace(sdft, prompts=replace(sdft.prompts, teacher_template=template))
        t_prompts = [teacher_ids(tokenizer, ex, run.prompts) for ex in exs]
        t_answers = greedy_answers(model, tokenizer, exs, run, cfg.max_new_tokens, teacher=True) if scorer else []
        with teacher_view(model, sdft.teacher):
            teacher_ref = reference_logp(model, tokenizer, [t_prompts[i] for i in with_ref], refs) if refs else None
        scored = SDFT(run).score(model, tokenizer, exs, completions=y)  # the training loss on the same rollouts
        per_seq, has = sequence_means(scored.per_token, scored.mask)
        per_seq = per_seq[has].tolist() or [0.0]
        teacher_acc = statistics.fmean(scorer(ex, a) for ex, a in zip(exs, t_answers)) if scorer else None
        result = TemplateResult(
            name=name, n=len(exs), teacher_accuracy=teacher_acc, student_accuracy=student_acc if scorer else None,
            teacher_ref_logp=teacher_ref, student_ref_logp=student_ref,
            signal_mean=statistics.fmean(per_seq), signal_std=statistics.pstdev(per_seq), verdict="", advice="",
        )
        result.verdict = verdict(result.answer_lift, result.ref_lift, result.signal_mean)
        result.advice = ADVICE[result.verdict]
        results.append(result)
    return results


def quick_check(model, tokenizer, examples: list[Example], objective) -> dict | None:
    """The pre-flight `Trainer.train()` runs first when given it: 4 examples, 32 tokens, one line, and a loud
    warning (no stop) when the teacher gains nothing. Only SDFT has a teacher; other objectives get None."""
    sdft = getattr(objective, "cfg", None)
    if not isinstance(sdft, SDFTConfig):
        return None
    result, = preflight(model, tokenizer, examples, cfg=PreflightConfig(sample_size=4, max_new_tokens=32, sdft=sdft))
    # wrapped at word boundaries here: a notebook's output area would break the long line mid-word
    tqdm.write(textwrap.fill(result.line(), width=100, break_long_words=False, subsequent_indent="    "))
    if result.verdict == "no signal":
        warnings.warn(f"{result.line()}\n{result.advice}", stacklevel=3)  # points at train()
    return asdict(result)


def compare_templates(model, tokenizer, examples, scorer: Scorer | None = None, cfg: PreflightConfig | None = None):
    """The pre-flight for every template in TEMPLATES, side by side."""
    return preflight(model, tokenizer, examples, TEMPLATES, scorer, cfg)


def table(results: list[TemplateResult]) -> str:
    def f(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    head = f"{'template':<16}{'student acc':>12}{'teacher acc':>12}{'ref lift':>10}{'signal':>14}  verdict"
    rows = [f"{r.name:<16}{f(r.student_accuracy, '.2f'):>12}{f(r.teacher_accuracy, '.2f'):>12}"
            f"{f(r.ref_lift, '+.2f'):>10}{r.signal_mean:>8.3f}±{r.signal_std:<5.3f}  {r.verdict}" for r in results]
    return "\n".join([head, *rows])


def bar_chart(results: list[TemplateResult]):
    """plotly: accuracy lift and reference log-prob lift per template."""
    import plotly.graph_objects as go

    names = [r.name for r in results]
    fig = go.Figure([
        go.Bar(name="answer accuracy lift (teacher − student)", x=names, y=[r.answer_lift for r in results]),
        go.Bar(name="reference log-prob lift (nats/token)", x=names, y=[r.ref_lift for r in results]),
        go.Bar(name="signal: mean divergence (nats/token)", x=names, y=[r.signal_mean for r in results]),
    ])
    fig.update_layout(barmode="group", height=350, title="How much does the demonstration help the teacher?",
                      margin=dict(t=50, b=40, l=40, r=20))
    return fig


def main(argv: list[str] | None = None) -> list[TemplateResult]:
    from ..models import add_student, load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled", help="'bundled', a local folder or a hub id")
    parser.add_argument("--data", default="demo", help="a bundled set name or a jsonl path")
    parser.add_argument("--templates", nargs="+", default=["paper"], choices=sorted(TEMPLATES))
    parser.add_argument("--scorer", choices=sorted(SCORERS), help="default: 'answer' when every example has one")
    parser.add_argument("--sample-size", type=int, default=PreflightConfig.sample_size)
    parser.add_argument("--max-new-tokens", type=int, default=PreflightConfig.max_new_tokens)
    args = parser.parse_args(argv)
    model, tok = load(args.model)
    model = add_student(model)
    cfg = PreflightConfig(sample_size=args.sample_size, max_new_tokens=args.max_new_tokens)
    scorer = SCORERS[args.scorer] if args.scorer else None
    results = preflight(model, tok, load_dataset(args.data), {t: TEMPLATES[t] for t in args.templates}, scorer, cfg)
    print(table(results))
    for r in results:
        print(f"{r.name}: {r.advice}")
    return results


if __name__ == "__main__":
    main()
