"""The run report: written by every train(), rebuilt from the saved files alone, all model text escaped."""

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from sdft_lab import SDFT, SFT, SDFTConfig, TrainConfig, Trainer
from sdft_lab import report
from sdft_lab.cli import run as cli

SECTIONS = ("Run", "Pre-flight", "Metrics", "Greedy answers of the student, before and after",
            "A final rollout, token by token", "Config")
HOSTILE = '<script>alert("x")</script> & <b>'


class Page(HTMLParser):
    """Collects the section titles and the text of every element; fails on a stray </script>."""

    def __init__(self):
        super().__init__()
        self.h2, self.tags, self._in_h2 = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def parsed(path) -> Page:
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


def test_train_writes_a_report_with_every_section(tiny, demo, tmp_path):
    model, tok = tiny
    trainer = Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=6, skip_first=0)), demo[:2],
                      TrainConfig(steps=2, batch_size=2, lr=1e-2, run_dir=str(tmp_path / "run")))
    trainer.train()
    run_dir = tmp_path / "run"
    assert {p.name for p in run_dir.iterdir()} >= {"run.json", "metrics.jsonl", "report.html", "report.md"}
    page = parsed(run_dir / "report.html")
    assert list(SECTIONS) == page.h2
    assert page.tags.count("script") == 4  # plotly itself, inlined (works offline), and three figures
    run = json.loads((run_dir / "run.json").read_text())
    assert run["steps"] == 2 and run["answers"]["before"] and len(run["answers"]["after"]) == 2
    assert run["diff"]["tokens"] and len(run["diff"]["tokens"]) == len(run["diff"]["log_ratio"])
    assert run["versions"]["torch"] and run["machine"]["cpu"]
    md = (run_dir / "report.md").read_text()
    assert all(f"## {s}" in md for s in SECTIONS)


def test_memory_is_each_steps_own_peak_and_in_the_report(tiny, demo, tmp_path):
    """Step 2 allocates 1 GiB for a moment, steps 1 and 3 do not: only step 2's record shows it. Breaks it
    fails on (each made once): the per-step reset deleted (step 3 keeps step 2's peak), or the current RSS
    reported instead of the peak (step 2 shows nothing)."""
    model, tok = tiny
    sft = SFT()
    loss = sft.loss

    def heavy_on_step_2(*a, **k):
        if len(trainer.history) == 1:
            block = torch.ones(2**28)  # 1 GiB of float32, written, then freed before the step ends
            del block
        return loss(*a, **k)

    sft.loss = heavy_on_step_2
    trainer = Trainer(model, tok, sft, demo[:2], TrainConfig(steps=3, batch_size=2, run_dir=str(tmp_path)))
    peaks = [r["rss_peak_gib"] for r in trainer.train()]
    assert peaks[1] - peaks[0] > 0.8 and peaks[1] - peaks[2] > 0.8, peaks
    assert f"| rss peak | {max(peaks):.2f} GiB |" in (tmp_path / "report.md").read_text()
    # a run written before the figures were named *_gib: rebuilt, its memory is still there (and not 0.00)
    old = (tmp_path / "metrics.jsonl").read_text().replace('"rss_peak_gib"', '"rss_peak_gb"')
    (tmp_path / "metrics.jsonl").write_text(old)
    cli(["report", str(tmp_path)])
    assert f"| rss peak | {max(peaks):.2f} GiB |" in (tmp_path / "report.md").read_text()


def test_the_report_is_rebuilt_from_the_saved_files_and_escapes_model_text(tiny, demo, tmp_path):
    model, tok = tiny
    Trainer(model, tok, SDFT(SDFTConfig(max_new_tokens=4, skip_first=0)), demo[:2],
            TrainConfig(steps=1, batch_size=2, run_dir=str(tmp_path))).train()
    run = json.loads((tmp_path / "run.json").read_text())
    run["answers"]["after"][0] = HOSTILE  # model text that would run as code if it were not escaped
    run["diff"]["tokens"][0] = HOSTILE
    run["diff"]["question"] = HOSTILE
    run["config"]["note"] = "```\n" + HOSTILE  # and would close a markdown fence
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "report.html").unlink()

    assert cli(["report", str(tmp_path)])["html"] == str(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert HOSTILE not in page
    assert page.count('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;') == 3  # answer, question, token
    assert '&lt;script&gt;alert(\\&quot;x\\&quot;)' in page  # the config, as JSON
    assert parsed(tmp_path / "report.html").tags.count("script") == 4  # no script tag came from the text
    md = (tmp_path / "report.md").read_text()
    assert "<script>" in md and "<script>" not in outside_fences(md)  # raw only in code blocks …
    assert "````json" in md  # … whose fence the text's own ``` cannot close


def outside_fences(md: str) -> str:
    """The markdown without its fenced code blocks (CommonMark: a fence closes on a run at least as long)."""
    kept, fence = [], None
    for line in md.splitlines():
        run = re.match(r"^`{3,}", line)
        if fence is None and run:
            fence = run.group()
        elif fence is not None and run and run.group().startswith(fence) and not line.strip("`").strip():
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def test_report_of_a_folder_that_is_no_run_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="run.json is missing"):
        cli(["report", str(tmp_path)])


def test_report_false_writes_nothing_and_run_dirs_do_not_collide(tiny, demo, tmp_path, monkeypatch):
    monkeypatch.setenv("SDFT_LAB_RUNS", str(tmp_path))
    model, tok = tiny
    a = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, report=False))
    b = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2))
    assert a.run_dir != b.run_dir and a.run_dir.parent == tmp_path
    a.train()
    assert not a.run_dir.exists()
    b.train()
    assert (b.run_dir / "report.html").is_file()


def test_report_to_trackio_logs_the_metric_stream(tmp_path):
    """In a process of its own: trackio reads TRACKIO_DIR (its local store) once, when imported."""
    pytest.importorskip("trackio", reason="an optional extra: pip install -e .[tracking]")
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import tiny_llama
from transformers import AutoTokenizer
from sdft_lab import SFT, TrainConfig, Trainer, add_student, load_dataset
from sdft_lab.bundled import bundled_path
from trackio.sqlite_storage import SQLiteStorage
tok = AutoTokenizer.from_pretrained(bundled_path())
trainer = Trainer(add_student(tiny_llama(tok)), tok, SFT(), load_dataset("demo")[:2],
                  TrainConfig(steps=3, batch_size=2, report=False, report_to="trackio", run_dir={str(tmp_path / "r")!r}))
trainer.train()
print(json.dumps({{"tracked": [[r["step"], r["loss"], r["rss_peak_gib"]] for r in SQLiteStorage.get_logs("sdft_lab", "r")],
                  "history": [[r["step"], r["loss"], r["rss_peak_gib"]] for r in trainer.history]}}))
"""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads(done.stdout.strip().splitlines()[-1])
    assert logged["tracked"] == logged["history"] and len(logged["history"]) == 3


def test_an_unknown_or_missing_tracker_is_a_clear_error(tiny, demo, tmp_path, monkeypatch):
    model, tok = tiny
    with pytest.raises(ValueError, match="report_to must be one of"):
        Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, report=False,
                                                         report_to="tensorboard")).train()
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    trainer = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, report=False, report_to="wandb"))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ImportError, match="pip install wandb"):
        trainer.train()
    assert trainer.step_count == 0 and not trainer.history  # it failed before the step changed anything
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_the_before_answers_are_taken_by_whichever_call_comes_first(tiny, demo, tmp_path):
    model, tok = tiny
    trainer = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=2, batch_size=2, run_dir=str(tmp_path)))
    trainer.step()  # as notebook 00 does, before train()
    trainer.train()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["answers"]["before"] is not None and len(run["answers"]["before"]) == 2


def test_a_report_that_cannot_be_written_warns_and_the_run_goes_on(tiny, demo, tmp_path, monkeypatch):
    model, tok = tiny
    trainer = Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=1, batch_size=2, run_dir=str(tmp_path)))
    monkeypatch.setattr(report, "render", lambda run_dir: 1 / 0)
    with pytest.warns(UserWarning, match="run report could not be written.*ZeroDivisionError"):
        history = trainer.train()
    assert len(history) == 1 and (tmp_path / "metrics.jsonl").is_file()


def test_a_records_key_missing_in_some_steps_is_left_out_not_a_crash(tiny, demo, tmp_path):
    model, tok = tiny
    Trainer(model, tok, SFT(), demo[:2], TrainConfig(steps=2, batch_size=2, run_dir=str(tmp_path))).train()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["cuda_alloc_peak_gib"] = 1.0  # e.g. a run resumed on a CPU from a GPU checkpoint
    (tmp_path / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    report.render(tmp_path)
    assert "cuda_alloc_peak_gib" not in (tmp_path / "report.md").read_text()


def test_an_experiment_without_reports_still_saves_its_figures(tmp_path):
    from sdft_lab.experiments.runs import evaluated

    evaluated(tmp_path / "sft", "sft", {"qa": {"all": {"lenient": 0.5}}})  # TrainConfig(report=False): no run.json
    assert json.loads((tmp_path / "sft" / "results.json").read_text()) == {"sft": {"qa": {"all": {"lenient": 0.5}}}}
    assert not (tmp_path / "sft" / "report.html").exists()
