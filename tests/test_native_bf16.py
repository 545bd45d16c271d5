"""bench/native_bf16.py, the bf16 policy's measurements: the pair's comparison and BF16_RULE against hand-computed
figures, the fp32 check that decides where fp32 runs, the resume of each stage, the A B B A speed-ups, and the
refusals (a CPU without native bf16, a file from another machine or of a smoke run). Without running a model:
the measurements themselves need a CPU with native bf16."""

import importlib.util
import io
import json
import math
from pathlib import Path

import pytest

from sdft_lab import precision
from sdft_lab.experiments import frontier

spec = importlib.util.spec_from_file_location("native_bf16", Path(__file__).parents[1] / "bench" / "native_bf16.py")
nb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nb)


def trial(seed, answer, passage=0.3, drift=0.18, retention=0.62, **extra):
    return {"seed": seed, "gain": {"answer": answer, "passage": passage}, "drift": {"general": drift},
            "retention": retention, **extra}


def test_the_comparison_pairs_the_seeds_and_takes_the_rules_margins():
    """Answer gains 1, 2, 3 in fp32 and 1.5, 2.5, 3.5 in bf16 (bf16 listed in another order): each seed moves by
    +0.5, the change +0.5; sd 1, so a fresh seed would move the mean of three differences by z·√(2/3) = 2.7344 ×
    0.8165 = 2.2326 (z = Φ⁻¹(1 − 0.025/8)), above 10 % of 2: the margin, within. Passage 0.30 on every seed
    moving by 0.02: sd 0, margin 10 % of 0.30 = 0.03, within. Retention 0.62 on 120 probes: margin
    √(0.62·0.38/120) = 0.0443; 0.62 → 0.57 is −0.05, outside. Breaks it fails on (each made once): the seeds
    paired by position (+2.5, −0.5, −0.5), the margin the re-seed term alone (0 for the passage), √(2/n)
    dropped (2.734), the retention margin 10 % like the others (0.062, within)."""
    fp32 = [trial(s, a) for s, a in zip((0, 1, 2), (1.0, 2.0, 3.0))]
    bf16 = [trial(s, a, passage=0.32, retention=0.57) for s, a in zip((2, 0, 1), (3.5, 1.5, 2.5))]
    rows = {r["figure"]: r for r in nb.compare(fp32, bf16, n_probes=120)}
    answer = rows["answer gain"]
    assert answer["per_seed"] == pytest.approx([0.5, 0.5, 0.5]) and answer["change"] == pytest.approx(0.5)
    z = frontier.band_z(8)
    assert z == pytest.approx(2.7344, abs=1e-4)
    assert answer["fp32_sd"] == pytest.approx(1.0) and answer["margin"] == pytest.approx(z * math.sqrt(2 / 3))
    assert answer["within"]
    assert rows["passage gain"]["margin"] == pytest.approx(0.03) and rows["passage gain"]["within"]
    assert rows["retention"]["margin"] == pytest.approx(math.sqrt(0.62 * 0.38 / 120))
    assert rows["retention"]["change"] == pytest.approx(-0.05) and not rows["retention"]["within"]
    assert answer["seeds"] == [0, 1, 2]


def test_bf16_rule_keeps_bf16_only_when_every_figure_of_both_methods_is_within_its_margin():
    """SFT's drift 0.18 in fp32 and 0.25 in bf16 (sd 0, margin 0.018): bf16 becomes an option, though SDFT's figures are
    the same. Break it fails on (made once): the rule read on the SDFT side only."""
    same = [trial(s, 2.0 + 0.1 * s) for s in range(3)]
    sft_bf16 = [trial(s, 1.8, drift=0.25) for s in range(3)]
    sft_fp32 = [trial(s, 1.8) for s in range(3)]
    assert nb.keeps_bf16({"sdft": nb.compare(same, same, 120), "sft": nb.compare(sft_fp32, sft_fp32, 120)})
    assert not nb.keeps_bf16({"sdft": nb.compare(same, same, 120), "sft": nb.compare(sft_fp32, sft_bf16, 120)})


def published_as(pair, pin, seeds=(0, 1, 2), sides=("sdft", "sft")):
    """The pair's published fp32 trials, as the pair stage saves them under the pin."""
    return [{**t, "name": pair[side]["name"], "side": side, "precision_pin": pin}
            for side in sides for t in pair[side]["fp32"] if t["seed"] in seeds]


def test_the_pair_is_the_published_workshop_pair():
    """The two configurations notebook 03 trains (frontier.workshop_pair), each with its three fp32 trials, found
    by name. Break it fails on (made once): the trials looked up by family (every learning rate's)."""
    pair = nb.the_pair()
    sdft, sft = frontier.workshop_pair(frontier.published())
    assert {s: p["name"] for s, p in pair.items()} == {"sdft": sdft["name"], "sft": sft["name"]}
    assert all([t["seed"] for t in p["fp32"]] == [0, 1, 2] and {t["name"] for t in p["fp32"]} == {p["name"]}
               for p in pair.values())


def test_where_fp32_repeats_the_published_figures_they_stand_and_bf16_is_judged_against_them():
    """The fp32 check equal to SDFT's published seed 0, bf16 trials equal to the published ones: nothing more
    to run, every change 0, bf16 kept. The same with SFT's bf16 retention 0.1 lower: not kept. Breaks it fails
    on (each made once): the check's tolerance dropped (any fp32 rerun would stand for the published), the
    rule applied before both sides have every seed."""
    pair = nb.the_pair()
    check = published_as(pair, "fp32", seeds=(0,), sides=("sdft",))
    bf16 = published_as(pair, "bf16")
    assert nb.pair_todo(check + bf16, pair, nb.SEEDS) == []
    stage = {"trials": check + bf16}
    nb.conclude_pair(stage, pair)
    assert stage["fp32_reproduced"] is True and stage["keeps_bf16"] is True
    assert all(r["change"] == 0 for rows in stage["comparison"].values() for r in rows)

    lower = [{**t, "retention": t["retention"] - 0.1} if t["side"] == "sft" else t for t in bf16]
    stage = {"trials": check + lower}
    nb.conclude_pair(stage, pair)
    assert stage["keeps_bf16"] is False

    stage = {"trials": check + [t for t in bf16 if t["seed"] < 2]}
    nb.conclude_pair(stage, pair)
    assert stage["keeps_bf16"] is None and set(stage["comparison"]) == {"sdft", "sft"}

    off = [{**check[0], "gain": {**check[0]["gain"], "answer": check[0]["gain"]["answer"] + 1e-4}}]
    assert nb.reproduced(off, pair) is False


def test_where_fp32_does_not_repeat_them_every_fp32_run_is_made_here_and_judges_bf16():
    """A machine whose fp32 seed 0 differs by 0.01: after the check and the bf16 runs, fp32 on every other
    (side, seed) is still to run, and the comparison takes this machine's fp32 trials, not the published. Breaks
    it fails on (each made once): the other fp32 runs never scheduled, the published trials compared anyway."""
    pair = nb.the_pair()
    here = [{**t, "gain": {**t["gain"], "answer": t["gain"]["answer"] + 0.01}} for t in published_as(pair, "fp32")]
    bf16 = published_as(pair, "bf16")
    assert nb.pair_todo([], pair, nb.SEEDS)[:3] == [("fp32", "sdft", 0), ("bf16", "sdft", 0), ("bf16", "sft", 0)]
    assert nb.pair_todo(here[:1] + bf16, pair, nb.SEEDS) == [
        ("fp32", "sft", 0), ("fp32", "sdft", 1), ("fp32", "sft", 1), ("fp32", "sdft", 2), ("fp32", "sft", 2)]
    stage = {"trials": here + bf16}
    nb.conclude_pair(stage, pair)
    answer = {r["figure"]: r for r in stage["comparison"]["sdft"]}["answer gain"]
    assert stage["fp32_reproduced"] is False and answer["change"] == pytest.approx(-0.01)


def test_only_the_present_pairs_fp32_check_decides_where_fp32_runs():
    """A file holding the fp32 check of an earlier pair (another name, other figures) before this pair's, which
    repeats the published figures: the published fp32 trials stand and no other fp32 run is scheduled. Break it
    fails on (made once): the check looked up without the pair's name (five needless fp32 runs)."""
    pair = nb.the_pair()
    check = published_as(pair, "fp32", seeds=(0,), sides=("sdft",))
    stale = [{**check[0], "name": "sdft lr=1", "gain": {"answer": 9.0, "passage": 9.0}}]
    assert nb.reproduced(stale + check, pair) is True
    assert nb.pair_todo(stale + check + published_as(pair, "bf16"), pair, nb.SEEDS) == []


def test_a_rerun_skips_what_each_stage_has_done_for_the_present_pair():
    """Saved trials of the pair's configuration count as done; a trial of another configuration (a changed
    frontier would pick another) does not, nor a bf16 trial for the fp32 check; the workshop resumes at the
    first A B B A position not run. Breaks it fails on (each made once): done trials keyed without their
    precision, or without their configuration's name."""
    pair = nb.the_pair()
    bf16_seed0 = published_as(pair, "bf16", seeds=(0,))
    assert nb.pair_todo(bf16_seed0, pair, nb.SEEDS)[0] == ("fp32", "sdft", 0)
    stale = [{**t, "name": "sdft lr=1"} for t in bf16_seed0[:1]]
    assert ("bf16", "sdft", 0) in nb.pair_todo(stale, pair, nb.SEEDS)
    assert nb.workshop_todo([{"position": 0}, {"position": 1}], nb.WORKSHOP_ORDER) == [(2, "fp32"), (3, "auto")]


def test_the_pair_stage_saves_each_trial_as_its_line_arrives_and_stops_on_a_failed_process(monkeypatch):
    """A fake process per precision prints a log line and then a trial's JSON per run: each trial is saved as
    it arrives (the log line goes to stderr, not into the file), the loop runs the fp32 check's process, then
    the bf16 one; a process that exits 1 stops the stage with what it finished saved. Break it fails on (made
    once): every stdout line parsed as a trial."""
    pair = nb.the_pair()
    published = {(t["side"], t["seed"]): t for t in published_as(pair, "bf16")}
    calls, saved = [], []

    class Proc:
        def __init__(self, args, pin, lines=False):
            batch = json.loads(args[2])
            calls.append((pin, batch))
            rows = [{**published[(side, seed)], "precision_pin": pin, "precision": pin} for side, seed in batch]
            self.stdout = io.StringIO("Loading weights\n" + "".join(json.dumps(r) + "\n" for r in rows))
            self.returncode = 1 if pin == "bf16" and fail else 0

        def wait(self):
            return self.returncode

    monkeypatch.setattr(nb, "child", Proc)
    fail = False
    results = {}
    nb.run_pair(results, lambda: saved.append(len(results["pair"]["trials"])), smoke=False)
    assert [pin for pin, _ in calls] == ["fp32", "bf16"] and len(calls[1][1]) == 6
    assert saved[:7] == [1, 2, 3, 4, 5, 6, 7] and results["pair"]["keeps_bf16"] is True

    calls.clear()
    fail = True
    results = {}
    with pytest.raises(SystemExit, match="bf16 runs failed"):
        nb.run_pair(results, lambda: None, smoke=False)
    assert len(results["pair"]["trials"]) == 7  # what the failed process printed before it failed is kept


def test_the_pair_worker_prints_what_the_stage_reads_from_a_trial(monkeypatch, capsys):
    """search.trial faked by the published trial it stands for (the frontier's own output): the line carries
    every figure BF16_RULE reads, the pair's name, the side and the pin. Break it fails on (made once): KEEP
    without "drift"."""
    import sdft_lab.experiments.search as search
    import sdft_lab.models as models
    pair = nb.the_pair()
    monkeypatch.setattr(models, "load", lambda name: (None, None))
    monkeypatch.setattr(precision, "describe", lambda model: "bf16 (test)")
    monkeypatch.setattr(search, "trial", lambda base, tok, side, s, seed, cache, steps, qa: pair[side]["fp32"][seed])
    monkeypatch.setenv(precision.ENV, "bf16")
    nb.pair_worker([["sft", 1]], smoke=False)
    line = json.loads(capsys.readouterr().out.strip())
    assert line["name"] == pair["sft"]["name"] and line["side"] == "sft" and line["precision_pin"] == "bf16"
    assert all(isinstance(nb.figure(line, name), float) for name in nb.FIGURES)


def test_the_workshop_stage_warms_up_under_each_pin_then_times_a_b_b_a_and_resumes(monkeypatch, tmp_path):
    """A fake workshop process per run: one untimed run under the policy and one under fp32 come first, then the
    four timed runs in A B B A order, each saved with the run's precision and timings as it ends; a rerun of a
    finished stage starts nothing. Breaks it fails on (each made once): the warm-ups left out (the first timed
    run would pay the machine's one-off choices), a finished stage warmed up again."""
    calls = []

    class Proc:
        def __init__(self, args, pin, lines=False):
            calls.append((pin, Path(args[2]).name))
            Path(args[2]).mkdir(parents=True)
            ran = {"precision": pin, "total_s": 1.0, "timings_s": {"sdft steps": 0.5},
                   "sft": {"answers": ["a"]}, "sdft": {"answers": ["b"]}}
            (Path(args[2]) / "results.json").write_text(json.dumps(ran))

        def wait(self):
            return 0

    monkeypatch.setattr(nb, "child", Proc)
    monkeypatch.setattr(nb, "HERE", tmp_path / "bench")
    results, saved = {}, []
    nb.run_workshop(results, lambda: saved.append(len(results["workshop"]["runs"])), tmp_path / "x.json", smoke=False)
    assert calls == [("auto", "warm_auto"), ("fp32", "warm_fp32"), ("auto", "workshop_0"), ("fp32", "workshop_1"),
                     ("fp32", "workshop_2"), ("auto", "workshop_3")]
    assert saved == [1, 2, 3, 4] and [r["precision"] for r in results["workshop"]["runs"]] == list(nb.WORKSHOP_ORDER)
    assert len(results["workshop"]["speedups"]) == 2
    calls.clear()
    nb.run_workshop(results, lambda: None, tmp_path / "x.json", smoke=False)
    assert calls == []


def test_a_workshop_pair_cut_in_half_by_a_stop_is_timed_again_whole(monkeypatch, tmp_path):
    """Positions 0–2 saved (the second pair half done): its first run is dropped and both of its runs are
    timed in the new sitting, after the warm-ups. Break it fails on (made once): the half kept (the pair's
    runs timed in two sittings)."""
    calls = []

    class Proc:
        def __init__(self, args, pin, lines=False):
            calls.append(Path(args[2]).name)
            Path(args[2]).mkdir(parents=True, exist_ok=True)
            (Path(args[2]) / "results.json").write_text(json.dumps(
                {"precision": pin, "total_s": 1.0, "timings_s": {}, "sft": {"answers": []}, "sdft": {"answers": []}}))

        def wait(self):
            return 0

    monkeypatch.setattr(nb, "child", Proc)
    monkeypatch.setattr(nb, "HERE", tmp_path / "bench")
    results = {"workshop": {"order": list(nb.WORKSHOP_ORDER), "warm_s": {},
                            "runs": [{"position": i, "pin": p, "wall_s": 100.0} for i, p in
                                     enumerate(nb.WORKSHOP_ORDER[:3])]}}
    nb.run_workshop(results, lambda: None, tmp_path / "x.json", smoke=False)
    assert calls == ["warm_auto", "warm_fp32", "workshop_2", "workshop_3"]
    assert [r["position"] for r in results["workshop"]["runs"]] == [0, 1, 2, 3]


def test_the_workshop_speed_up_is_fp32_over_the_policy_within_each_pair_of_runs():
    """A B B A with the machine 10 % slower in the second pair: 160/100 and 165/110, 1.6 and 1.5, not the
    ratio of the pooled times. An unfinished pair gives nothing. Break it fails on (made once): the ratio
    inverted (policy over fp32)."""
    runs = [{"position": 0, "wall_s": 100.0}, {"position": 1, "wall_s": 160.0}, {"position": 2, "wall_s": 165.0},
            {"position": 3, "wall_s": 110.0}]
    assert nb.speedups(runs) == pytest.approx([1.6, 1.5])
    assert nb.speedups(runs[:3]) == pytest.approx([1.6])


@pytest.fixture
def no_stage(monkeypatch):
    """A stage that starts fails the test at once."""
    for stage in ("run_pair", "run_workshop", "run_bench"):
        monkeypatch.setattr(nb, stage, lambda *a, **k: pytest.fail("a stage started"))


def test_it_refuses_a_cpu_without_native_bf16(monkeypatch, tmp_path, no_stage):
    """Emulated bf16 would be measured as if it were the policy's: refused, naming the missing instructions and
    --smoke, and nothing written. Break it fails on (made once): the check dropped."""
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: False)
    out = tmp_path / "native_bf16.json"
    with pytest.raises(SystemExit, match="avx512_bf16 nor amx_bf16.*--smoke"):
        nb.main(["--out", str(out)])
    assert not out.exists()


def test_a_smoke_run_writes_its_own_file_by_default(monkeypatch, tmp_path):
    """--smoke without --out goes to native_bf16_smoke.json, so the measurements' file stays free. Break it fails
    on (made once): one default for both."""
    monkeypatch.setattr(nb, "HERE", tmp_path / "bench")
    monkeypatch.setattr(nb, "run_pair", lambda results, save, smoke: save())
    nb.main(["--smoke", "--stages", "pair"])
    assert [p.name for p in (tmp_path / "bench" / "results").iterdir()] == ["native_bf16_smoke.json"]


def test_it_refuses_to_add_to_a_file_of_another_machine_or_of_a_smoke_run(monkeypatch, tmp_path, no_stage):
    """A speed-up's pair of runs or a comparison split over two machines says nothing, and a smoke run's figures
    are not measurements: each refused, the file untouched. Breaks it fails on (each made once): either check
    dropped."""
    from sdft_lab.report import machine
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: True)
    out = tmp_path / "native_bf16.json"
    out.write_text(json.dumps({"date": "2026-01-01", "machine": {**machine(), "cpu": "another CPU"}, "smoke": False}))
    before = out.read_text()
    with pytest.raises(SystemExit, match="another machine"):
        nb.main(["--out", str(out)])
    assert out.read_text() == before
    out.write_text(before := json.dumps({"date": "2026-01-01", "machine": machine(), "smoke": True}))
    with pytest.raises(SystemExit, match="holds a smoke run"):
        nb.main(["--out", str(out)])
    assert out.read_text() == before


def test_each_child_runs_under_its_own_pin_and_never_an_inherited_one(monkeypatch):
    """A pin left in the caller's shell (bf16) is replaced by the child's (fp32), or removed where the child runs
    at the policy's own choice (the bench). Breaks it fails on (each made once): the pin not set, the inherited
    one kept."""
    monkeypatch.setenv(precision.ENV, "bf16")
    assert nb.child_env("fp32")[precision.ENV] == "fp32"
    assert precision.ENV not in nb.child_env(None)
