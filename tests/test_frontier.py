"""The frontier's rule (experiments/frontier.py) on made-up trials whose verdicts are known by hand."""

import math

import pytest

from sdft_lab.experiments.frontier import RULE, points, reading, sft_frontier, verdicts, workshop_pair


def trials(family, method, lr, drift, gains, retention=0.65):
    return [{"family": family, "method": method, "name": f"{family} {lr}", "settings": {"lr": lr}, "seed": s,
             "gain": {"answer": g, "passage": g / 4}, "drift": {"general": drift, "task": 2 * drift},
             "retention": retention, "train_s": 60.0} for s, g in enumerate(gains)]


SFT = trials("SFT", "sft", 1e-4, 0.01, [0.99, 1.0, 1.01]) + trials("SFT", "sft", 1e-3, 0.1, [1.99, 2.0, 2.01])


def results(*sdft):
    r = {"trials": SFT + [t for group in sdft for t in group], "base_retention": 0.65, "n_probes": 120}
    r["points"] = points(r)
    return r


def test_sft_frontier_interpolates_in_log_drift():
    pts = points({"trials": SFT})
    gain, se, where = sft_frontier(pts, math.sqrt(0.01 * 0.1), "answer")  # halfway in log drift
    assert (gain, where) == (pytest.approx(1.5), "inside") and se == pytest.approx(0.01 / math.sqrt(3))
    assert sft_frontier(pts, 0.001, "answer")[2] == "below" and sft_frontier(pts, 1.0, "answer")[2] == "above"


@pytest.mark.parametrize("drift, gains, verdict", [
    (math.sqrt(1e-3), [1.98, 2.0, 2.02], "AHEAD"),   # +0.5 over SFT's 1.5 at the same drift
    (math.sqrt(1e-3), [1.48, 1.5, 1.52], "EVEN"),
    (math.sqrt(1e-3), [0.98, 1.0, 1.02], "BEHIND"),
    (0.005, [1.48, 1.5, 1.52], "AHEAD"),             # less drift than SFT's least, and more learned
    (0.005, [0.88, 0.9, 0.92], "OUTSIDE"),           # less drift, less learned: no verdict
    (0.2, [0.98, 1.0, 1.02], "BEHIND"),              # more drift than SFT's most, and less learned
])
def test_the_rule_gives_the_verdicts_worked_out_by_hand(drift, gains, verdict):
    """Breaks it fails on (each made once): the margin's sign reversed, or "below SFT's range" judged as
    inside (an extrapolated frontier)."""
    r = results(trials("SDFT guided", "sdft", 1e-3, drift, gains))
    row, = verdicts(r)["per_point"]
    assert row["answer"]["verdict"] == verdict
    assert verdicts(r)["ahead"]["answer"] == (verdict == "AHEAD")
    assert f"answer gain {row['answer']['margin']:+.2f} nats against SFT at the same drift ({verdict}" in reading(r)


def test_a_point_that_forgets_on_the_probes_is_not_counted_ahead():
    r = results(trials("SDFT guided", "sdft", 1e-3, math.sqrt(1e-3), [1.98, 2.0, 2.02], retention=0.5))
    assert verdicts(r)["per_point"][0]["answer"]["verdict"] == "AHEAD" and not verdicts(r)["ahead"]["answer"]
    assert "before any run" not in RULE and "AHEAD" in RULE and "twice the standard error" in RULE


def test_the_workshop_pair_is_the_best_guided_point_and_the_sft_rate_at_its_drift():
    r = results(trials("SDFT guided", "sdft", 3e-4, 0.012, [1.0, 1.0, 1.0]),
                trials("SDFT guided", "sdft", 1e-3, 0.08, [1.8, 1.8, 1.8]),
                trials("SDFT guided", "sdft", 3e-3, 0.3, [2.5, 2.5, 2.5], retention=0.55))  # forgets: not eligible
    sdft, sft = workshop_pair(r)
    assert (sdft["lr"], sft["lr"]) == (1e-3, 1e-3)  # drift 0.08 is nearer 0.1 than 0.01 on a log scale


def test_the_bracket_is_found_among_three_sft_rates_and_more_drift_that_learns_more_is_no_verdict():
    """Break it fails on (made once): always interpolating between SFT's first two points."""
    three = SFT + trials("SFT", "sft", 3e-3, 1.0, [3.99, 4.0, 4.01])  # not on the line of the first two
    pts = points({"trials": three})
    gain, _, where = sft_frontier(pts, math.sqrt(0.1 * 1.0), "answer")  # halfway between 0.1 and 1.0
    assert (gain, where) == (pytest.approx(3.0), "inside")
    r = {"trials": SFT + trials("SDFT guided", "sdft", 1e-2, 0.2, [2.48, 2.5, 2.52]), "base_retention": 0.65,
         "n_probes": 120}
    r["points"] = points(r)
    assert verdicts(r)["per_point"][0]["answer"]["verdict"] == "OUTSIDE"  # past SFT's range, learning more


def test_the_docs_hold_the_sweep_as_measured():
    """docs/frontier.json's points and verdicts follow from its own trials, and docs/recipes.md shows its table,
    its rule and its verdicts: no figure edited by hand."""
    import json
    from pathlib import Path

    from sdft_lab.experiments.frontier import table

    docs = Path(__file__).resolve().parents[1] / "docs"
    sweep = json.loads((docs / "frontier.json").read_text())
    assert sweep["points"] == points(sweep) and sweep["verdicts"] == verdicts(sweep)
    assert sweep["verdicts_wall_clock"] == verdicts(sweep, "SFT, 60 steps")
    assert all(len(p["seeds"]) == 3 for p in sweep["points"] if p["family"] != "SDFT")
    text = (docs / "recipes.md").read_text()
    assert table(sweep) in text, "docs/recipes.md's frontier table differs from docs/frontier.json: regenerate it"
    assert RULE in " ".join(text.split()) and all(line in text for line in reading(sweep).splitlines())


def test_merge_joins_sweeps_run_side_by_side_once_each(tmp_path):
    import json

    from sdft_lab.experiments.frontier import merge

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, ts in ((a, SFT), (b, SFT[:3] + trials("SDFT guided", "sdft", 1e-3, 0.03, [1.6, 1.6, 1.6]))):
        folder.mkdir()
        (folder / "frontier.json").write_text(json.dumps({"trials": ts, "base_retention": 0.65, "n_probes": 120}))
    merged = merge(a, [b])
    assert len(merged["trials"]) == 9  # SFT's first three trials counted once
    assert json.loads((a / "frontier.json").read_text())["points"] == points(merged)
    assert merged["verdicts"]["per_point"][0]["answer"]["verdict"] == "AHEAD"
