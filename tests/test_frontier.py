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


def test_retention_must_lie_within_one_standard_error_of_the_base():
    """Fails if the retention threshold is 2 SE instead of 1 (the break: `base - 2 * se_base`). Base 0.65 on 120
    probes: SE = sqrt(0.65 · 0.35 / 120) = 0.0435, so 0.62 (0.7 SE below) passes and 0.59 (1.4 SE below) fails."""
    se = math.sqrt(0.65 * 0.35 / 120)
    for retention, ok in ((0.62, True), (0.65 - 1.4 * se, False), (0.65 - 0.99 * se, True)):
        r = results(trials("SDFT guided", "sdft", 1e-3, math.sqrt(1e-3), [1.98, 2.0, 2.02], retention=retention))
        assert verdicts(r)["per_point"][0]["retention_ok"] == ok, retention
        assert verdicts(r)["ahead"]["answer"] == ok


def test_a_one_seed_sft_point_is_not_part_of_the_frontier():
    """Fails if the frontier accepts one-seed SFT points (the break: the `len(p["seeds"]) > 1` filter dropped):
    a lone SFT run at drift 0.03 that learned 3.0 would lift SFT's frontier above the SDFT point and turn its
    AHEAD into BEHIND. With the filter the frontier is the two three-seed points': 1.5 at drift sqrt(1e-3)."""
    lone = trials("SFT", "sft", 3e-4, 0.03, [3.0])
    r = results(trials("SDFT guided", "sdft", 1e-3, math.sqrt(1e-3), [1.98, 2.0, 2.02]), lone)
    row, = verdicts(r)["per_point"]
    assert row["answer"]["sft_at_same_drift"] == pytest.approx(1.5)
    assert row["answer"]["verdict"] == "AHEAD"


def qa_trials(family, method, lr, drift, direct, seeds=(0, 1, 2)):
    out = trials(family, method, lr, drift, [2 * d for d in direct])
    for t, d, s in zip(out, direct, seeds):
        t["seed"] = s
        t["qa"] = {"direct": d, "indirect": d / 2, "ood": d / 2, "all": 2 * d / 3}
        t["qa_strict"] = {k: v / 2 for k, v in t["qa"].items()}
    return out


def test_the_qa_sweep_judges_the_choosing_and_the_fresh_seeds_apart_with_the_corrected_band():
    """The QA sweep's conclude: points and verdicts on seeds 0–2 with z = Φ⁻¹(1 − 0.025/m) for the m = 7 SDFT
    configurations those seeds chose among (2.69), and on the fresh seeds 3–5 alone with z = 1.96; direct QA is
    judged like a gain. Fails if the fresh verdicts pool every seed, or if the correction is left out (the fresh
    margin 0.10 lies between the 1.96 and the 2.69 bands here)."""
    from sdft_lab.experiments.frontier import CHOSEN_AMONG, band_z, conclude

    assert band_z(1) == pytest.approx(1.95996, abs=1e-4) and band_z(4) == pytest.approx(2.4977, abs=1e-4)
    sft = []
    for seeds in ((0, 1, 2), (3, 4, 5)):
        sft += qa_trials("SFT, paraphrases", "sft", 3e-4, 0.01, [0.2, 0.25, 0.3], seeds)
        sft += qa_trials("SFT, paraphrases", "sft", 1e-3, 0.1, [0.4, 0.45, 0.5], seeds)
    mid = math.sqrt(1e-3)  # SFT's frontier there: direct QA 0.35 with SE 0.05/√3 = 0.0289 on both seed sets
    # SDFT: 0.55 on seeds 0–2 (+0.20, band 2.69 · 0.0408 = 0.110) and 0.45 on seeds 3–5 (+0.10, band 1.96 · 0.0408
    # = 0.080): AHEAD on both, and the fresh +0.10 would be EVEN under the choosing seeds' 2.69 band
    sdft = qa_trials("SDFT guided, all rows, paraphrases", "sdft", 3e-3, mid, [0.5, 0.55, 0.6]) + qa_trials(
        "SDFT guided, all rows, paraphrases", "sdft", 3e-3, mid, [0.4, 0.45, 0.5], (3, 4, 5))
    r = conclude({"sweep": "qa", "trials": sft + sdft, "base_retention": 0.65, "n_probes": 120})
    chose, fresh = r["verdicts"]["per_point"][0], r["verdicts_fresh"]["per_point"][0]
    assert CHOSEN_AMONG == 7 and band_z(CHOSEN_AMONG) == pytest.approx(2.6901, abs=1e-4)
    assert r["verdicts"]["z"] == pytest.approx(band_z(CHOSEN_AMONG)) and r["verdicts_fresh"]["z"] == pytest.approx(band_z(1))
    assert [p["seeds"] for p in r["points_fresh"]] == [[3, 4, 5]] * 3
    assert chose["qa_direct"]["margin"] == pytest.approx(0.20) and fresh["qa_direct"]["margin"] == pytest.approx(0.10)
    se = 0.05 / math.sqrt(3)
    assert fresh["qa_direct"]["band"] == pytest.approx(band_z(1) * math.sqrt(2) * se)
    assert chose["qa_direct"]["band"] == pytest.approx(band_z(CHOSEN_AMONG) * math.sqrt(2) * se)
    assert (chose["qa_direct"]["verdict"], fresh["qa_direct"]["verdict"]) == ("AHEAD", "AHEAD")
    # the same fresh margin judged with the choosing seeds' band is only EVEN: the correction matters
    assert 0.10 < band_z(CHOSEN_AMONG) * math.sqrt(2) * se


def test_the_docs_hold_the_qa_sweep_as_measured():
    """docs/frontier_qa.json's points and both sets of verdicts follow from its own trials, and docs/recipes.md
    shows both tables and the readings: no figure edited by hand, no seed set left out."""
    import json
    from pathlib import Path

    from sdft_lab.experiments.frontier import QA_RULE, conclude, qa_reading, qa_table

    docs = Path(__file__).resolve().parents[1] / "docs"
    sweep = json.loads((docs / "frontier_qa.json").read_text())
    again = conclude(json.loads(json.dumps(sweep)))
    for key in ("points", "verdicts", "points_fresh", "verdicts_fresh"):
        assert sweep[key] == again[key], key
    assert {t["seed"] for t in sweep["trials"]} == {0, 1, 2, 3, 4, 5}
    assert all(len(t["qa_answers"]) == 24 for t in sweep["trials"]) and len(sweep["base_answers"]) == 24
    text = (docs / "recipes.md").read_text()
    assert qa_table(sweep) in text and qa_table(sweep, "_fresh") in text, "regenerate docs/recipes.md's QA tables"
    assert QA_RULE in " ".join(text.split()) and all(line in text for line in qa_reading(sweep).splitlines())


def test_qa_target_counts_only_points_that_kept_retention():
    """Breaks it fails on: the retention filter left out (SFT's forgetful 50 % would reach the target), the
    threshold read as "more than" 40 % instead of "40 % or more", a tie on QA given to the first point listed."""
    from sdft_lab.experiments.frontier import qa_target

    def point(family, qa, kept):
        return {"family": family, "lr": 1e-3, "qa_direct": {"mean": qa}, "retention": {"mean": kept}}
    sweep = {"base_retention": 0.65, "n_probes": 120,  # one SE: 0.0435
             "points": [point("SFT", 0.5, 0.55), point("SDFT", 0.25, 0.62)],
             "points_fresh": [point("SDFT", 0.4, 0.64)]}
    assert ") not reached: the best is SDFT at lr 0.001 with 25%" in qa_target(sweep)
    tie = {**sweep, "points": [point("SFT", 0.0, 0.61), point("SDFT", 0.0, 0.64)]}  # a tie goes to the retention
    assert "the best is SDFT at lr 0.001 with 0%" in qa_target(tie)
    assert qa_target(sweep, "_fresh").startswith("target (40% of the held-out direct questions, retention not more "
                                                 "than one SE below the base's) reached: the best is SDFT")
    assert qa_target({**sweep, "points": [point("SFT", 0.5, 0.5)]}).startswith("no configuration kept")


def lever_sweep(levers, fresh=()):
    """SFT's frontier at direct QA 0.35 (drift √1e-3, SE 0.0289 per point) on both seed sets, the baseline at 0.40
    on both, `levers` {family: (direct QA on seeds 0–2, retention)} at the same drift (the ones not named at 0.30),
    and `fresh` {family: direct QA on seeds 3–5}."""
    from sdft_lab.experiments.frontier import BASELINE_QA, LEVERS, SFT_QA, conclude

    mid, out = math.sqrt(1e-3), []
    for seeds in ((0, 1, 2), (3, 4, 5)):
        out += qa_trials(SFT_QA, "sft", 3e-4, 0.01, [0.2, 0.25, 0.3], seeds)
        out += qa_trials(SFT_QA, "sft", 1e-3, 0.1, [0.4, 0.45, 0.5], seeds)
        out += qa_trials(BASELINE_QA, "sdft", 3e-3, mid, [0.35, 0.4, 0.45], seeds)
    for family in LEVERS:
        direct, retention = levers.get(family, ([0.25, 0.3, 0.35], 0.65))
        out += [{**t, "retention": retention} for t in qa_trials(family, "sdft", 3e-3, mid, direct)]
    for family, direct in dict(fresh).items():
        out += qa_trials(family, "sdft", 3e-3, mid, direct, (3, 4, 5))
    return conclude({"sweep": "qa", "trials": out, "base_retention": 0.65, "n_probes": 120})


def lever(word):
    from sdft_lab.experiments.frontier import LEVERS
    return next(f for f in LEVERS if word in f)


def test_the_lever_rule_chooses_on_seeds_0_to_2_and_keeps_only_what_the_fresh_seeds_confirm():
    """LEVER_RULE by hand. Seeds 0–2: the anchor's direct QA 0.55 beats the SFT term's 0.50 and the baseline's
    0.40, but it forgets (retention 0.55, below the base's 0.65 − 0.0435), so the SFT term is chosen; top-k ties
    with it on direct QA and loses on the answer gain (0.1 lower). Fresh seeds: the SFT term's margin over SFT is
    +0.20 against the baseline's +0.05, a difference of 0.15 over a band of 1.96 · √(0.0408² + 0.0408²) = 0.113:
    kept; at +0.10 (a difference of 0.05) not kept. Fails if the retention filter is dropped (the anchor is
    chosen), if the tie is not broken by the answer gain (the first listed wins), if "kept" ignores the band,
    or if the choice is made before every lever has its seeds 0–2."""
    from sdft_lab.experiments.frontier import BASELINE_QA, LEVERS, conclude, lever_reading

    sftw, anchor, topk = lever("SFT term"), lever("anchor"), lever("top-k")
    for order in ((topk, sftw), (sftw, topk)):  # the tie listed both ways round
        levers = {anchor: ([0.5, 0.55, 0.6], 0.55), **{f: ([0.45, 0.5, 0.55], 0.65) for f in order}}
        r = lever_sweep(levers)
        for t in r["trials"]:
            if t["family"] == topk:
                t["gain"]["answer"] -= 0.1
        r = conclude(dict(r, trials=[t for t in r["trials"] if t["family"] != order[1]] +
                          [t for t in r["trials"] if t["family"] == order[1]]))
        assert r["levers"] == {"chosen": sftw, "kept": None}, r["levers"]
        assert "its fresh seeds 3–5 (and the baseline's) have not all run" in lever_reading(r)
    kept = lever_sweep({sftw: ([0.45, 0.5, 0.55], 0.65)}, fresh={sftw: [0.5, 0.55, 0.6]})
    se = 0.05 / math.sqrt(3) * math.sqrt(2)  # each margin's SE: the point's and SFT's
    assert kept["levers"]["difference"] == pytest.approx(0.15)
    assert kept["levers"]["band"] == pytest.approx(1.95996 * math.sqrt(2) * se, rel=1e-4)
    assert kept["levers"]["kept"] is True and "kept, it moves the QA frontier" in lever_reading(kept)
    not_kept = lever_sweep({sftw: ([0.45, 0.5, 0.55], 0.65)}, fresh={sftw: [0.4, 0.45, 0.5]})
    assert not_kept["levers"]["kept"] is False and "not kept" in lever_reading(not_kept)
    assert lever_sweep({})["levers"] == {"chosen": BASELINE_QA, "kept": False}  # every lever learns less
    assert "no lever moves the QA frontier" in lever_reading(lever_sweep({}))
    partial = lever_sweep({})
    partial = conclude(dict(partial, trials=[t for t in partial["trials"] if not (t["family"] == topk and t["seed"] == 2)]))
    assert partial["levers"] == {} and "not all run yet" in lever_reading(partial)
    assert len(LEVERS) == 3


def test_only_the_chosen_lever_runs_on_the_fresh_seeds():
    """runs_on: every lever runs on seeds 0–2; on seeds 3–5 only the chosen one, and none before the choice is
    made, while the baseline and SFT run on all seeds. Fails if the schedule runs every lever on the fresh seeds."""
    from sdft_lab.experiments.frontier import BASELINE_QA, LEVERS, SFT_QA, conclude, runs_on

    sftw = lever("SFT term")
    r = lever_sweep({sftw: ([0.45, 0.5, 0.55], 0.65)})
    assert r["levers"]["chosen"] == sftw
    assert all(runs_on(r, f, 1) for f in [*LEVERS, BASELINE_QA, SFT_QA])
    assert runs_on(r, sftw, 3) and not any(runs_on(r, f, 5) for f in LEVERS if f != sftw)
    assert runs_on(r, BASELINE_QA, 3) and runs_on(r, SFT_QA, 4)
    early = conclude(dict(r, trials=[t for t in r["trials"] if t["family"] != lever("anchor")]))
    assert not any(runs_on(early, f, 3) for f in LEVERS)


def test_sittings_name_each_day_and_machine_a_sweep_ran_on():
    """A sweep continued on another machine says so: fails if the trials' own machines are ignored (every run
    would be credited to the file's first sitting)."""
    from sdft_lab.experiments.frontier import sittings

    first = {"cpu": "AMD EPYC", "cpu_flags": ["avx2", "avx512f"], "torch_threads": 1}
    later = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "torch_threads": 1}
    r = {"date": "2026-12-02", "machine": first,
         "trials": [{}, {}, {"date": "2026-12-03", "machine": later}]}
    assert sittings(r) == ("2026-12-02 on AMD EPYC (avx2, avx512f), 1 torch thread: 2 runs; "
                           "2026-12-03 on AMD EPYC (avx2), 1 torch thread: 1 runs")
