"""ipywidgets for the notebooks: a token-diff stepper and a live diff that updates while SDFT trains, and the
per-token divergence curve they draw (markers in the token view's colours: blue where the teacher finds the
token likelier than the student does, red where less)."""

from __future__ import annotations

import html
from dataclasses import replace

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import display

from ..data import Example
from ..losses import DivergenceConfig
from ..report import log_ratio_color
from ..rollout import Completions, sample
from ..prompts import TEMPLATES, student_ids, teacher_ids
from ..sdft import SDFTConfig
from .diffs import TokenDiff, divergence_figure, to_html, token_diffs
from .plots import training_curves


WIDE = {"description_width": "initial"}  # labels at their full width, never cut to "temperat…"
NEUTRAL = ("#444444", "#9a9a9a", "#2ca02c", "#9467bd")  # line colours: blue and red mean the log-ratio's sign only
DIVERGENCES = {  # the stepper's choices: label → the loss's divergence
    "forward KL(T‖S)": DivergenceConfig(kind="forward_kl"),
    "reverse KL(S‖T)": DivergenceConfig(kind="reverse_kl"),
    "JSD (α 0.5)": DivergenceConfig(kind="jsd", alpha=0.5),
}


def short(text: str, n: int = 80) -> str:
    """text cut at a word boundary with an ellipsis, never mid-word."""
    if len(text) <= n:
        return text
    cut = text.rfind(" ", 0, n)
    return text[: cut if cut > 0 else n].rstrip(" ,;:") + " …"


def divergence_curve(diffs: list[TokenDiff], names: list[str] | None = None, title: str = "per-token divergence",
                     unit: str = "nats per token") -> go.Figure:
    """inspect.diffs.divergence_figure with one unit on the y axis and the token view's colours: lines in
    neutral greys, each token's marker coloured by its log-ratio as in to_html (blue: the teacher finds the
    token likelier than the student does; red: less likely), faded where the loss leaves the token out."""
    fig = divergence_figure(diffs, names, title)
    for trace, d, colour in zip(fig.data, diffs, NEUTRAL * len(diffs)):
        trace.line.color = colour
        trace.marker.update(size=11, color=[log_ratio_color(r) for r in d.log_ratio], line=dict(color=colour, width=1),
                            opacity=[1.0 if keep else 0.35 for keep in d.in_loss])
    fig.update_layout(yaxis_title=f"divergence ({unit})", xaxis_title="completion token (position)",
                      showlegend=len(diffs) > 1)
    return fig


def template_name(template: str) -> str:
    return next((name for name, t in TEMPLATES.items() if t == template), "configured")


class DiffStepper:
    """One rollout of one example, scored by the teacher and the student, and the levers that change it.

    Levers that change who *writes* the rollout draw a new one: the example, the temperature, "guided" (the
    student writes with the demonstration in its prompt, EDGE-OPD) and "resample". Levers that change only
    how the *same* rollout is scored re-score it: the teacher template, whether the teacher sees the
    demonstration, the evidence mask, the divergence, and a demonstration you type (then "re-score").
    `widget` is what the notebook shows; the controls are attributes, so tests can drive them headlessly.
    """

    def __init__(self, model, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None):
        self.model, self.tokenizer, self.examples = model, tokenizer, examples
        self.cfg = cfg or SDFTConfig()
        templates = dict(TEMPLATES)
        if template_name(self.cfg.prompts.teacher_template) == "configured":
            templates["configured"] = self.cfg.prompts.teacher_template
        self.templates = templates
        self.pick = W.Dropdown(options=[(short(ex.question), i) for i, ex in enumerate(examples)],
                               description="example", style=WIDE, layout=W.Layout(flex="1 1 420px", max_width="760px"))
        self.resample = W.Button(description="resample", icon="refresh", layout=W.Layout(width="auto"))
        self.template = W.Dropdown(options=list(templates), value=template_name(self.cfg.prompts.teacher_template),
                                   description="teacher template", style=WIDE, layout=W.Layout(width="auto"))
        self.temperature = W.FloatSlider(value=self.cfg.temperature, min=0.1, max=2.0, step=0.1,
                                         description="temperature", style=WIDE, layout=W.Layout(width="320px"))
        self.with_demo = W.Checkbox(value=True, description="the teacher sees the demonstration", indent=False,
                                    style=WIDE, layout=W.Layout(width="auto"))
        self.guided = W.Checkbox(value=self.cfg.guided >= 0.5, indent=False, style=WIDE, layout=W.Layout(width="auto"),
                                 description="guided rollout: the student writes with the demonstration")
        self.evidence = W.Checkbox(value=self.cfg.evidence_mask, indent=False, style=WIDE, layout=W.Layout(width="auto"),
                                   description="evidence mask: loss only where the teacher is likelier")
        kind = next((k for k, d in DIVERGENCES.items() if d == self.cfg.divergence), None)
        self.divergences = dict(DIVERGENCES) if kind else {**DIVERGENCES, "configured": self.cfg.divergence}
        self.divergence = W.Dropdown(options=list(self.divergences), value=kind or "configured",
                                     description="divergence", style=WIDE, layout=W.Layout(width="auto"))
        self.demonstration = W.Textarea(value=examples[0].demonstration, description="demonstration", style=WIDE,
                                        rows=3, layout=W.Layout(flex="1 1 420px", max_width="760px"))
        self.rescore = W.Button(description="re-score the same rollout", icon="check", layout=W.Layout(width="auto"))
        self.status, self.view, self.plot = W.HTML(), W.HTML(), W.Output()
        self.seed = 0
        self.rollout: Completions | None = None
        self.diff: TokenDiff | None = None

        for w in (self.pick, self.temperature, self.guided):
            w.observe(self.on_new_rollout, names="value")
        for w in (self.template, self.with_demo, self.evidence, self.divergence):
            w.observe(self.score, names="value")
        self.resample.on_click(self.on_resample)
        self.rescore.on_click(self.score)
        for w in (self.template, self.temperature, self.guided, self.evidence):
            w.layout.margin = "2px 16px 2px 0"
        row = W.Layout(flex_flow="row wrap", align_items="center")
        controls = W.VBox([W.HBox([self.template, self.temperature, self.with_demo], layout=row),
                           W.HBox([self.guided, self.evidence, self.divergence], layout=row),
                           W.HBox([self.demonstration, self.rescore], layout=row), self.status])
        self.widget = W.VBox([W.HBox([self.pick, self.resample], layout=row), controls, self.view, self.plot])
        self.new_rollout()

    def example(self) -> Example:
        """The picked example, with the demonstration from the text box."""
        return replace(self.examples[self.pick.value], demonstration=self.demonstration.value)

    def config(self) -> SDFTConfig:
        return replace(self.cfg, temperature=self.temperature.value, guided=float(self.guided.value),
                       evidence_mask=self.evidence.value, divergence=self.divergences[self.divergence.value],
                       prompts=replace(self.cfg.prompts, teacher_template=self.templates[self.template.value]))

    def new_rollout(self) -> None:
        """Sample the rollout: from the bare question, or (guided) with the demonstration in the prompt."""
        cfg, ex = self.config(), self.example()
        prompt = (teacher_ids if self.guided.value else student_ids)(self.tokenizer, ex, cfg.prompts)
        self.rollout = sample(self.model, self.tokenizer, [prompt], cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                              self.seed, cfg.engine)
        self.score()

    def on_new_rollout(self, change) -> None:
        if change["owner"] is self.pick:  # another example: its own demonstration in the box
            self.demonstration.value = self.examples[self.pick.value].demonstration
        self.new_rollout()

    def on_resample(self, _=None) -> None:
        self.seed += 1
        self.new_rollout()

    def score(self, *_) -> None:
        """Score the current rollout under the current levers, and redraw."""
        cfg = self.config()
        self.diff, = token_diffs(self.model, self.tokenizer, [self.example()], cfg, completions=self.rollout,
                                 demonstration=self.with_demo.value)
        d, kept = self.diff, sum(self.diff.in_loss)
        who = "the student with the demonstration in its prompt (guided)" if self.guided.value else \
            "the student from the bare question"
        typed = self.demonstration.value != self.examples[self.pick.value].demonstration
        self.status.value = (f'<div style="font-family:sans-serif;font-size:12px">rollout written by {html.escape(who)}; '
                             f'{kept} of {len(d.tokens)} tokens in the loss; divergence {html.escape(self.divergence.value)}'
                             f'{"; scored under your demonstration" if typed else ""}</div>')
        self.view.value = to_html(d)
        self.plot.clear_output(wait=True)
        with self.plot:
            display(divergence_curve([d], title=f"per-token {self.divergence.value} on this rollout"))


def diff_stepper(model, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None) -> W.VBox:
    """The stepper's widget (DiffStepper): pick an example, resample, toggle the levers, type a demonstration."""
    return DiffStepper(model, tokenizer, examples, cfg).widget


class LiveDiff:
    """A Trainer callback: re-scores fixed rollouts every `every` steps and redraws the diff and the curves.

    The rollouts stay the same, so the colours change only because the student moves toward the teacher.
    Each rollout is shown twice, side by side: as scored before training, and as scored now.
    """

    def __init__(self, model, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None,
                 every: int = 1, seed: int = 10**6):
        self.model, self.tokenizer, self.examples = model, tokenizer, examples
        self.cfg, self.every = cfg or SDFTConfig(), every
        prompts = [student_ids(tokenizer, ex, self.cfg.prompts) for ex in examples]
        self.completions = sample(model, tokenizer, prompts, self.cfg.max_new_tokens, self.cfg.temperature,
                                  self.cfg.top_p, seed)
        first = token_diffs(model, tokenizer, examples, self.cfg, completions=self.completions)
        self.steps, self.mean_divergence = [0], [_mean(first)]
        self.views = [W.HTML(_titled("now (step 0)", d)) for d in first]
        pairs = [W.HBox([W.HTML(_titled("before training", d)), view],
                        layout=W.Layout(flex_flow="row wrap"))
                 for d, view in zip(first, self.views)]
        self.curves = W.Output()
        self.widget = W.VBox([*pairs, self.curves])
        self.history: list[dict] = []

    def __call__(self, record: dict) -> None:
        self.history.append(record)
        if record["step"] % self.every:
            return
        diffs = token_diffs(self.model, self.tokenizer, self.examples, self.cfg, completions=self.completions)
        self.steps.append(record["step"])
        self.mean_divergence.append(_mean(diffs))
        for view, d in zip(self.views, diffs):
            view.value = _titled(f"now (step {record['step']})", d)
        self.curves.clear_output(wait=True)
        with self.curves:
            curves = training_curves(self.history, ("loss", "kl"))
            curves.update_traces(line_color=NEUTRAL[0], marker_color=NEUTRAL[0])
            curves.update_yaxes(title_text="nats per token").update_xaxes(title_text="step")
            display(self.figure(), curves)

    def figure(self) -> go.Figure:
        """The fixed rollouts' mean divergence per step: the student's move toward the teacher, on the same tokens."""
        fig = go.Figure(go.Scatter(x=self.steps, y=self.mean_divergence, mode="lines+markers",
                                   line_color=NEUTRAL[0]))
        fig.update_layout(title="mean divergence on the fixed rollouts above (the same tokens every step)",
                          yaxis_title="divergence (nats per token)", height=280, margin=dict(t=60, b=40, l=40, r=20))
        fig.update_xaxes(title_text="step", tickmode="linear", tick0=0, dtick=max(1, -(-len(self.steps) // 10)))
        return fig


def _titled(title: str, d) -> str:
    return (f'<div style="min-width:320px;max-width:560px;margin-right:24px"><h4 style="margin:4px 0">{title}</h4>'
            f'{to_html(d)}</div>')


def _mean(diffs) -> float:
    return sum(d.summary()["mean_divergence"] for d in diffs) / len(diffs)
