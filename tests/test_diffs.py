"""The token diff: agrees with the loss, escapes hostile text, keeps whitespace visible."""

import html
from dataclasses import replace
from html.parser import HTMLParser

import pytest
import torch

from sdft_lab import SDFT, SDFTConfig
from sdft_lab.inspect.diffs import TokenDiff, divergence_figure, table_html, to_html, token_diffs, words


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_diff_agrees_with_the_loss(tiny, demo, kind):
    """The diff of a rollout is the loss's view of it, row by row. Breaks it fails on (each made once): the
    rows' logits paired with the wrong row's hidden states, and the temperature left out of the diff."""
    model, tok = tiny
    for p in model.parameters():  # a non-zero adapter, so that student and teacher differ
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    cfg = SDFTConfig(max_new_tokens=10, skip_first=2, temperature=0.7)
    cfg.divergence.kind = kind
    with torch.no_grad():
        scored = SDFT(cfg).score(model, tok, demo[:3], seed=4)
    diffs = token_diffs(model, tok, demo[:3], cfg, completions=scored.completions)
    for b, d in enumerate(diffs):
        in_loss = [v for v, keep in zip(d.divergence, d.in_loss) if keep]
        assert sum(in_loss) == pytest.approx(scored.per_token[b].sum().item(), rel=1e-5, abs=1e-6)
        assert d.in_loss[:2] == [False, False]
        assert all(0 <= p <= 1 for p in d.p_student + d.p_teacher) and min(d.teacher_rank) >= 1
        kept, n = scored.mask[b].bool(), len(d.ids)  # each side's log p of the token is the loss's own statistic
        for side in ("teacher", "student"):
            torch.testing.assert_close(torch.tensor(getattr(d, f"p_{side}"))[kept[:n]].log(),
                                       scored.stats[f"{side}_logp"][b, :n][kept[:n]], rtol=1e-4, atol=1e-5)
        assert d.log_ratio[0] == pytest.approx(torch.tensor(d.p_teacher[0] / d.p_student[0]).log().item(), abs=1e-4)
        assert len(d.top_teacher[0]) == 5 and d.top_teacher[0][0][1] >= d.top_teacher[0][-1][1]
        assert len(d.rows()) == len(d.ids) and set(d.summary()) >= {"mean_divergence", "most_disagreed"}


def test_same_seed_same_diff_and_the_demonstration_toggle(tiny, demo):
    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=6)
    a, = token_diffs(model, tok, demo[:1], cfg, seed=3)
    b, = token_diffs(model, tok, demo[:1], cfg, seed=3)
    assert a.ids == b.ids and a.divergence == b.divergence
    off, = token_diffs(model, tok, demo[:1], cfg, seed=3, demonstration=False)
    # the adapter starts at zero, so without the demonstration teacher and student are the same model
    assert max(off.divergence) < 1e-6 and max(a.divergence) > 1e-3


HOSTILE = ["<script>alert(1)</script>", "</div>", '" onmouseover="x()', "&amp;", "<b>", "\n", "  ", "\t"]


def hostile_diff() -> TokenDiff:
    n = len(HOSTILE)
    return TokenDiff(question="<img src=x onerror=alert(1)>", ids=list(range(n)), tokens=HOSTILE,
                     p_student=[0.5] * n, p_teacher=[0.25] * n, divergence=[0.1] * n, log_ratio=[-0.69] * n,
                     teacher_rank=[2] * n, top_student=[[("</span>", 0.5)]] * n,
                     top_teacher=[[("<script>", 0.3)]] * n, in_loss=[False] + [True] * (n - 1))


class Parsed(HTMLParser):
    def __init__(self, page):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_text_is_escaped_everywhere():
    page = to_html(hostile_diff()) + table_html(hostile_diff())
    parsed = Parsed(page)
    # only the tags and attributes we write ourselves: no token became markup
    assert set(parsed.tags) <= {"div", "span", "style", "b", "table", "thead", "tbody", "tr", "th", "td"}
    assert set(parsed.attrs) <= {"class", "title", "style"}
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(1)>" in text and "</div>" in text
    assert page.count("<span") == page.count("</span>")
    assert html.escape("'</span>'") in page  # the top-k lists inside the tooltip are escaped too


def test_whitespace_tokens_stay_visible():
    page = to_html(hostile_diff())
    assert "↵\n" in page and "→\t" in page and ">  </span>" in page
    assert "white-space:pre;" in page and "border-style:dashed" in page  # the skipped first token


def test_the_pieces_of_a_word_stay_together():
    tokens = ["To", " Vel", "m", "ora", ",", " the", "\n", "cap", "ital"]
    assert words(tokens) == [[0], [1, 2, 3, 4], [5], [6], [7, 8]]  # a newline ends a word, and starts none
    d = replace(hostile_diff(), tokens=tokens, ids=list(range(9)), p_student=[.5] * 9, p_teacher=[.5] * 9,
                divergence=[0.0] * 9, log_ratio=[0.0] * 9, teacher_rank=[1] * 9, top_student=[[("a", .5)]] * 9,
                top_teacher=[[("a", .5)]] * 9, in_loss=[True] * 9)
    assert to_html(d).count('<span class="word">') == 5


def test_divergence_figure_escapes_hover_text():
    fig = divergence_figure([hostile_diff()])
    assert all("<script>" not in t for t in fig.data[0].text)


def test_live_diff_rescores_the_same_rollouts_each_step(tiny, demo):
    from sdft_lab import TrainConfig, Trainer
    from sdft_lab.inspect.widgets import LiveDiff, diff_stepper

    model, tok = tiny
    cfg = SDFTConfig(max_new_tokens=6, skip_first=0)
    live = LiveDiff(model, tok, demo[:2], cfg)
    ids = live.completions.ids.clone()
    Trainer(model, tok, SDFT(cfg), demo[:2], TrainConfig(steps=2, batch_size=2, lr=3e-2, preflight=False),
            callbacks=(live,)).train()
    assert live.steps == [0, 1, 2] and len(live.mean_divergence) == 3
    # the same rollouts every step, and the student moved toward the teacher on them
    assert torch.equal(live.completions.ids, ids) and live.mean_divergence[-1] < live.mean_divergence[0]
    assert all('class="sdft-diff"' in view.value for view in live.views)
    stepper = diff_stepper(model, tok, demo[:2], cfg)
    assert 'class="sdft-diff"' in stepper.children[2].value
