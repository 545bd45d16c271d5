"""ipywidgets for the notebooks: a token-diff stepper and a live diff that updates while SDFT trains."""

from __future__ import annotations

from dataclasses import replace

import ipywidgets as W
import plotly.graph_objects as go
from IPython.display import display

from ..data import Example
from .diffs import divergence_figure, to_html, token_diffs
from .plots import training_curves
from ..prompts import TEMPLATES, student_ids
from ..rollout import sample
from ..sdft import SDFTConfig


WIDE = {"description_width": "initial"}  # labels at their full width, never cut to "temperat…"


def short(text: str, n: int = 80) -> str:
    """text cut at a word boundary with an ellipsis, never mid-word."""
    if len(text) <= n:
        return text
    cut = text.rfind(" ", 0, n)
    return text[: cut if cut > 0 else n].rstrip(" ,;:") + " …"


def diff_stepper(model, tokenizer, examples: list[Example], cfg: SDFTConfig | None = None) -> W.VBox:
    """Pick an example, resample, toggle the demonstration, change temperature and template."""
    cfg = cfg or SDFTConfig()
    pick = W.Dropdown(options=[(short(ex.question), i) for i, ex in enumerate(examples)], description="example",
                      style=WIDE, layout=W.Layout(flex="1 1 420px", max_width="760px"))
    template = W.Dropdown(options=list(TEMPLATES), value="paper", description="teacher template", style=WIDE,
                          layout=W.Layout(width="auto"))
    temperature = W.FloatSlider(value=cfg.temperature, min=0.1, max=2.0, step=0.1, description="temperature",
                                style=WIDE, layout=W.Layout(width="320px"))
    with_demo = W.Checkbox(value=True, description="the teacher sees the demonstration", indent=False, style=WIDE,
                           layout=W.Layout(width="auto"))
    resample = W.Button(description="resample", icon="refresh", layout=W.Layout(width="auto"))
    view, plot = W.HTML(), W.Output()
    state = {"seed": 0}

    def refresh(*_):
        run = replace(cfg, temperature=temperature.value,
                      prompts=replace(cfg.prompts, teacher_template=TEMPLATES[template.value]))
        d, = token_diffs(model, tokenizer, [examples[pick.value]], run, seed=state["seed"], demonstration=with_demo.value)
        view.value = to_html(d)
        plot.clear_output(wait=True)
        with plot:
            display(divergence_figure([d]))

    def on_resample(_):
        state["seed"] += 1
        refresh()

    for w in (pick, template, temperature, with_demo):
        w.observe(refresh, names="value")
    resample.on_click(on_resample)
    refresh()
    for w in (template, temperature):
        w.layout.margin = "2px 16px 2px 0"
    return W.VBox([W.HBox([pick, resample], layout=W.Layout(flex_flow="row wrap", align_items="center")),
                   W.HBox([template, temperature, with_demo], layout=W.Layout(flex_flow="row wrap", align_items="center")),
                   view, plot])


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
            display(self.figure(), training_curves(self.history, ("loss", "kl")))

    def figure(self) -> go.Figure:
        """The fixed rollouts' mean divergence per step: the student's move toward the teacher, on the same tokens."""
        fig = go.Figure(go.Scatter(x=self.steps, y=self.mean_divergence, mode="lines+markers"))
        fig.update_layout(title="mean divergence on the fixed rollouts above (the same tokens every step)",
                          yaxis_title="nats per token", height=280, margin=dict(t=60, b=40, l=40, r=20))
        fig.update_xaxes(title_text="step", tickmode="linear", tick0=0, dtick=max(1, -(-len(self.steps) // 10)))
        return fig


def _titled(title: str, d) -> str:
    return (f'<div style="min-width:320px;max-width:560px;margin-right:24px"><h4 style="margin:4px 0">{title}</h4>'
            f'{to_html(d)}</div>')


def _mean(diffs) -> float:
    return sum(d.summary()["mean_divergence"] for d in diffs) / len(diffs)
