"""No notebook states a result by hand, and README's figures are the published files'.

Every decimal number and percentage in a notebook's markdown is a definition, a setting, a cell's time, a
citation or a figure cited from the paper, each named in ALLOWED with the words it must stand in; the
results themselves are printed by cells from the published files (docs/*.json). A number typed into a
sentence goes stale the next time a sweep is rerun: notebook 04 once said SDFT answered "41 %" of the
knowledge questions, a figure from a run no file held. README's frontier rows and probe figures are checked
against docs/frontier.json, and docs/experiments.md's continual-learning tables against docs/continual.json.
"""

import json
import re
from pathlib import Path

import pytest

from sdft_lab.eval.retention import retention_se
from sdft_lab.experiments import continual, frontier

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# a decimal (0.62, .5, +0.69, 1e-3) or a percentage (41 %, 8%), not inside a word, a version or an id
NUMBER = re.compile(r"(?<![\w.])[+\-−]?(?:\d+(?:\.\d+)?\s?%|\d*\.\d+(?:e-?\d+)?|\d+e-\d+)(?![\w.])")

# number → (the words before it that make it what it is, why it is not a result)
ALLOWED = {
    "70.2": (r"science Q&A $", "the paper's SDFT accuracy on science Q&A (Qwen2.5-7B)"),
    "66.2": (r"70\.2 vs $", "the paper's SFT accuracy on science Q&A"),
    "64.5": (r"(\*\*|\(|: )$", "the paper's prior-skill average for SDFT"),
    "53.4": (r"(64\.5 vs |64\.5 for SDFT against )$", "the paper's prior-skill average for SFT"),
    "0.69": (r"ln 2 ≈ $", "ln 2: JSD's bound in nats"),
    "+0.69": (r"natural-log unit of log-probability: $", "ln 2: a doubling of a probability, in nats"),
    "2.7": (r"e ≈ $", "Euler's number, to say what a nat is"),
    "0.5": (r"(α |at α )$", "a JSD weight the cell sets"),
    "3.1": (r"Physics of Language Models $", "the title of the cited paper"),
    f"{frontier.QA_TARGET:.0%}".replace("%", " %"): (r"[Ww]hether (the )?$", "the target, frontier.QA_TARGET"),
}
TIME = re.compile(r"^\s*(s|min|hours?)\b")  # a cell's or a run's measured time: "about 1.5 hours"
ARXIV = re.compile(r"arXiv $")


def prose(markdown: str) -> str:
    """The sentences of a markdown cell: code blocks and inline code (what a reader types) left out."""
    return re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", markdown, flags=re.S))


def typed_results(text: str) -> list[str]:
    """Every number in `text` that none of ALLOWED, a time or an arXiv id accounts for, with its context."""
    out = []
    for m in NUMBER.finditer(text):
        before, after, number = text[: m.start()], text[m.end():], m.group().replace("−", "-")
        rule = ALLOWED.get(number)
        if rule and re.search(rule[0], before[-60:]) or TIME.match(after) or ARXIV.search(before[-6:]):
            continue
        out.append(f"{number!r} in …{text[max(0, m.start() - 60):m.end() + 20]}…")
    return out


def test_typed_results_finds_a_hand_typed_figure_and_passes_the_allowed_ones():
    """Breaks it fails on: the old 04 sentence ("it answers 41 % of the knowledge questions") passing, or an
    allowed number passing in the wrong sentence (the paper's 64.5 quoted as this project's retention)."""
    assert typed_results("it answers 41 % of the knowledge questions")
    assert typed_results("SDFT keeps retention at 0.62")
    assert typed_results("our retention rose to 64.5")
    assert not typed_results("science Q&A 70.2 vs 66.2, about 1.5 hours, EDGE-OPD (arXiv 2605.23493), ln 2 ≈ 0.69")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_notebook_types_a_result_into_its_markdown(path):
    cells = json.loads(path.read_text())["cells"]
    typed = [f"cell {i}: {t}" for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             for t in typed_results(prose("".join(c["source"])))]
    assert not typed, f"{path.name} states figures by hand; print them from the results instead: {typed}"


def test_readme_frontier_rows_and_probe_figures_are_the_published_ones():
    """Breaks it fails on: a README row edited by hand or left behind when docs/frontier.json is rerun (the
    answer gain of guided SDFT, +2.77, changed to another figure), the base's retention or its SE retyped."""
    readme, sweep = (ROOT / "README.md").read_text(), frontier.published()
    points = {(p["family"], p["lr"]): p for p in sweep["points"]}
    rows = re.findall(r"^\| (SFT|SDFT, every rollout guided, evidence mask) \| ([\d.e-]+) \| (.+) \|$", readme, re.M)
    assert len(rows) == 3, "README's three frontier rows"
    for method, lr, rest in rows:
        p = points["SFT" if method == "SFT" else "SDFT guided, all rows", float(lr)]
        expected = [f"{p[g]['mean']:+.2f} ± {p[g]['sd']:.2f}" for g in ("answer", "passage")] + [
            f"{p['drift_general']['mean']:.3f}", f"{p['retention']['mean']:.2f}"]
        assert [c.strip("* ") for c in rest.split(" | ")] == expected, (method, lr)
    se = retention_se(sweep["base_retention"], sweep["n_probes"])
    assert f"base {sweep['base_retention']:.2f}, one SE {se:.3f}" in readme


def test_experiments_doc_shows_the_published_continual_run():
    """Breaks it fails on: docs/experiments.md's continual tables or sentences left behind after a rerun."""
    text, results = (ROOT / "docs" / "experiments.md").read_text(), continual.published()
    for score, kind in (("qa", "direct"), ("gain", "answer"), ("gain", "passage")):
        assert continual.table(results, score, kind) in text, (score, kind)
    assert all(line in text for line in continual.reading(results).splitlines())
    assert continual.RULE in text
