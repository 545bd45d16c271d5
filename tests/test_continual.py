"""Continual learning (experiments/continual.py): the stages, the rule that picks each method's settings, and a
tiny end-to-end run whose file carries every earlier batch after every stage."""

import json
import math

import pytest

from conftest import tiny_llama
from sdft_lab.experiments.continual import STAGES, batches, best_settings, continual, merge, table


def test_the_stages_are_three_disjoint_batches_of_eight_facts_with_their_paraphrases():
    """Fails if a batch leaks another's facts or leaves out the paraphrased questions."""
    stages = list(batches())
    assert [name for name, _, _ in stages] == [s[0] for s in STAGES] == ["A", "B", "C"]
    facts = [{ex.metadata["fact"] for ex in train} for _, train, _ in stages]
    assert all(len(f) == 8 for f in facts) and not (facts[0] & facts[1] or facts[1] & facts[2] or facts[0] & facts[2])
    assert all(len(train) == 8 * 8 for _, train, _ in stages)  # 2 questions + 6 paraphrases per fact
    assert all({it.fact for it in items} == f for (_, _, items), f in zip(stages, facts))


def test_each_method_gets_its_best_direct_qa_point_within_one_se_of_the_base():
    """Fails if the rule ignores retention (the 0.9 point forgets: 0.55 is more than one SE below 0.65)."""
    def point(name, method, qa, retention):
        return {"name": name, "method": method, "qa_direct": {"mean": qa}, "retention": {"mean": retention}}
    sweep = {"base_retention": 0.65, "n_probes": 120,
             "points": [point("a", "sft", 0.5, 0.64), point("b", "sft", 0.9, 0.55), point("c", "sdft", 0.4, 0.63)],
             "trials": [{"name": n, "settings": {"lr": lr}} for n, lr in (("a", 1), ("b", 2), ("c", 3))]}
    assert best_settings(sweep) == {"sft": {"lr": 1}, "sdft": {"lr": 3}}
    assert 0.65 - math.sqrt(0.65 * 0.35 / 120) > 0.55


def test_an_sdft_lever_counts_only_once_the_fresh_seeds_kept_it():
    """A lever with more direct QA on seeds 0–2 than the baseline is the pick only if LEVER_RULE kept it: fails if
    the continual run takes a lever that was chosen but not (yet) confirmed, or ignores one that was kept."""
    from sdft_lab.experiments.frontier import BASELINE_QA, LEVERS

    lever = next(iter(LEVERS))

    def point(name, family, qa):
        return {"name": name, "family": family, "method": "sdft", "qa_direct": {"mean": qa}, "retention": {"mean": 0.64}}
    sweep = {"base_retention": 0.65, "n_probes": 120,
             "points": [point("a", BASELINE_QA, 0.1), point("b", lever, 0.3)],
             "trials": [{"name": n, "settings": {"lr": lr}} for n, lr in (("a", 1), ("b", 2))]}
    for levers, pick in (({}, 1), ({"chosen": lever, "kept": None}, 1), ({"chosen": lever, "kept": False}, 1),
                         ({"chosen": lever, "kept": True}, 2)):
        assert best_settings({**sweep, "levers": levers}) == {"sdft": {"lr": pick}}, levers


def test_the_published_continual_run_used_the_qa_sweeps_confirmed_picks():
    """docs/continual.json's settings are what RULE gives on docs/frontier_qa.json as it stands: fails if the
    QA sweep's published results (its levers included) would now pick another configuration than the one the
    continual run trained."""
    from sdft_lab.experiments.continual import published
    from sdft_lab.experiments.frontier import published_qa

    assert best_settings(published_qa()) == published()["settings"]


@pytest.mark.slow
def test_a_tiny_run_measures_every_earlier_batch_after_every_stage(tokenizer, tmp_path):
    """One step per stage on the tiny llama, both methods: stage k's row holds batches A … k, with QA, gains,
    retention and drift; the file is written and a second call resumes without training again, and refuses to
    resume under other steps or settings (a break: the saved file taken as it is, whatever the call)."""
    base = tiny_llama(tokenizer)
    settings = {"sft": {"system": "short", "lr": 1e-3, "prompts": 2, "facts": 8, "para": 1},
                "sdft": {"system": "short", "template": "context-first", "skip_first": 0, "lr": 1e-3, "tokens": 3,
                         "k": 1, "prompts": 2, "facts": 8, "guided": 1.0, "mask": True, "para": 1}}
    results = continual(tmp_path, seeds=(0,), settings=settings, steps=1, limit=2, model=(base, tokenizer))
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("sft", 0), ("sdft", 0)]
    for run in results["runs"]:
        assert [sorted(s["tasks"]) for s in run["stages"]] == [["A"], ["A", "B"], ["A", "B", "C"]]
        for s in run["stages"]:
            assert 0 <= s["retention"] <= 1 and s["drift"]["general"] >= 0
            assert all(set(t) >= {"qa", "qa_strict", "gain", "answers"} for t in s["tasks"].values())
    assert json.loads((tmp_path / "continual.json").read_text()) == results
    assert "| sdft | C (1 seeds) |" in table(results)
    from sdft_lab.inspect.plots import continual_figure, continual_forgetting  # plotly: imported here, so the GPU box collects this file

    fig = continual_figure(results)
    assert len(fig.data) == 2 * (len(STAGES) + 1)  # per method: a line per batch and retention
    assert list(fig.data[0].x) == ["base", "after A", "after B", "after C"] and fig.data[0].y[0] is not None
    assert results["n_probes"] == 2 and len(continual_forgetting(results).data) == 2 * 2 + 1  # 2 panels × 2 methods, base
    again = continual(tmp_path, seeds=(0,), settings=settings, steps=1, limit=2, model=(base, tokenizer))
    assert again["runs"] == results["runs"]
    with pytest.raises(ValueError, match="another 'steps'"):  # resumed under other settings: refused, not mixed
        continual(tmp_path, seeds=(0,), settings=settings, steps=2, limit=2, model=(base, tokenizer))
    with pytest.raises(ValueError, match="ran sft with other settings"):
        continual(tmp_path, seeds=(0,), settings={**settings, "sft": {**settings["sft"], "lr": 3e-3}}, steps=1,
                  limit=2, model=(base, tokenizer))
    part = continual(tmp_path / "sdft", seeds=(0,), settings=settings, steps=1, limit=2, model=(base, tokenizer),
                     methods=("sdft",))
    assert [r["method"] for r in part["runs"]] == ["sdft"] and list(part["settings"]) == ["sdft"]


def _part(method: str, seeds: tuple[int, ...], lr: float = 1e-3, retention: float = 0.6, probes: int = 120) -> dict:
    return {"rule": "r", "steps": 24, "stages": ["A"], "n_probes": probes, "base": {"retention": retention},
            "settings": {method: {"lr": lr}}, "runs": [{"method": method, "seed": s, "stages": []} for s in seeds]}


def test_merge_joins_runs_measured_apart_and_refuses_what_does_not_fit():
    """Fails if merge drops or reorders a part's runs, or joins parts measured under a different base, rule or
    configuration, or keeps a (method, seed) run twice."""
    merged = merge([_part("sdft", (1, 0)), _part("sft", (0,)), _part("sdft", (2,))])
    assert [(r["method"], r["seed"]) for r in merged["runs"]] == [("sdft", 0), ("sdft", 1), ("sdft", 2), ("sft", 0)]
    assert merged["settings"] == {"sdft": {"lr": 1e-3}, "sft": {"lr": 1e-3}}
    with pytest.raises(ValueError, match="'base'"):
        merge([_part("sdft", (0,)), _part("sft", (0,), retention=0.5)])
    with pytest.raises(ValueError, match="'n_probes'"):  # a smoke part (--limit) beside a full one
        merge([_part("sdft", (0,)), _part("sft", (0,), probes=8)])
    with pytest.raises(ValueError, match="two configurations"):
        merge([_part("sdft", (0,)), _part("sdft", (1,), lr=3e-3)])
    with pytest.raises(ValueError, match="run twice"):
        merge([_part("sdft", (0,)), _part("sdft", (0,))])


def test_reading_states_what_each_batch_reached_and_kept_from_the_results():
    """Breaks it fails on: batch A read after its own stage at the end too (no forgetting could show), the
    retention verdict against two SE instead of one, a method's runs mixed with the other's, the methods'
    shares swapped in the last line."""
    from sdft_lab.experiments.continual import reading

    def stage(qa_a, gain_a, qa_b=None, kept=0.6, drift=0.2):
        tasks = {"A": {"qa": {"direct": qa_a}, "gain": {"answer": gain_a}}}
        if qa_b is not None:
            tasks["B"] = {"qa": {"direct": qa_b}, "gain": {"answer": 1.0}}
        return {"tasks": tasks, "retention": kept, "drift": {"general": drift}}
    base = {"tasks": {"A": {"qa": {"direct": 0.0}}, "B": {"qa": {"direct": 0.0}}}, "retention": 0.64}
    results = {"stages": ["A", "B"], "n_probes": 100, "base": base, "settings": {"sft": {"lr": 3e-4}, "sdft": {"lr": 3e-3}},
               "runs": [{"method": "sft", "seed": 0, "stages": [stage(0.5, 2.0), stage(0.25, 1.5, 0.7, kept=0.58)]},
                        {"method": "sdft", "seed": 0, "stages": [stage(1.0, 9.0), stage(1.0, 9.0, 1.0)]}]}
    text = reading(results).splitlines()[1]  # SFT's line: SDFT's perfect runs must not leak into it
    assert text.startswith("SFT (1 seeds, lr 0.0003)")
    assert "answers 60% of its direct questions (answer gain +1.50" in text  # (0.5 + 0.7) / 2, (2.0 + 1.0) / 2
    assert "batch A: 50% → 25% and gain +2.00 → +1.50" in text
    assert "retention after B 0.580 (-0.060, outside one SE" in text  # one SE: sqrt(.64 · .36 / 100) = 0.048
    assert reading(results).splitlines()[-1] == ("Batch A's answer gain after B, as a share of its gain right after A: "
                                                 "SFT 75%, SDFT 100%. Retention after B: SDFT +0.020 against SFT, "
                                                 "within the probes' one SE.")
