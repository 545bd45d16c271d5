"""`sdft-lab`: every command end to end, on a tiny random llama saved to a folder."""

import json

import pytest

from sdft_lab.cli import parser, run

from conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """One SDFT run from a YAML config plus flags; the flags win."""
    out = tmp_path_factory.mktemp("run")
    (out / "run.yaml").write_text("method: sdft\ndata: demo\ntrain:\n  lr: 0.5\n  batch_size: 2\n  preflight: false\n"
                                  "sdft:\n  max_new_tokens: 4\n  divergence:\n    kind: reverse_kl\n")
    run(["train", "--config", str(out / "run.yaml"), "--model", tiny_dir, "--steps", "2", "--lr", "0.01",
         "--checkpoint-every", "1", "--out", str(out / "sdft")])
    return out / "sdft"


@pytest.mark.parametrize("command", ["train", "eval", "diff", "export-trl"])
def test_help_lists_the_flags(command, capsys):
    with pytest.raises(SystemExit) as exit:
        run([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: sdft-lab {command}" in text and "--model" in text


def test_top_level_help_names_every_command():
    text = parser().format_help()
    assert all(c in text for c in ("train", "eval", "diff", "export-trl", "demo", "preflight", "experiment"))


def test_passthrough_commands_reach_the_module_scripts(capsys):
    with pytest.raises(SystemExit):
        run(["demo", "--help"])
    assert "Velmora" in capsys.readouterr().out  # sdft_lab.demo's own description


def test_train_writes_adapter_metrics_and_the_merged_config(trained):
    assert (trained / "adapter" / "adapter_config.json").is_file()
    history = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2] and all(r["loss"] == r["loss"] for r in history)
    config = json.loads((trained / "config.json").read_text())
    assert config["train"]["lr"] == 0.01  # the flag beat the file's 0.5
    assert config["train"]["batch_size"] == 2 and config["sdft"]["divergence"]["kind"] == "reverse_kl"  # the file's


def test_train_resumes_from_its_checkpoints(tiny_dir, trained):
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    result = run(["train", "--config", str(trained.parent / "run.yaml"), "--model", tiny_dir, "--steps", "2",
                  "--resume", "--out", str(trained)])
    assert result["history"] == []  # both steps were done: nothing left to train
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 2  # the restored history


def test_train_sft_from_a_json_config(tiny_dir, tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"method": "sft", "train": {"steps": 1, "batch_size": 2}}))
    result = run(["train", "--config", str(tmp_path / "run.json"), "--model", tiny_dir, "--out", str(tmp_path)])
    assert len(result["history"]) == 1 and "target_len" in result["history"][0]


@pytest.mark.parametrize("text, message", [
    ("trian:\n  steps: 2\n", r"run.yaml: unknown key\(s\) \['trian'\]"),
    ("train:\n  stepz: 2\n", r"train: unknown key\(s\) \['stepz'\]; TrainConfig has"),
    ("train:\n  lr: -1\n", r"run.yaml: train: lr must be > 0"),
    ("sdft:\n  divergence:\n    kind: kl\n", r"sdft.divergence: divergence kind must be one of"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_config_files_say_what_and_where(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(SystemExit, match=message):
        run(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path)])


def test_eval_scores_probes_knowledge_and_a_task_with_an_adapter(tiny_dir, trained, tmp_path):
    """Break it fails on (made once): the CLI loading the model without --adapter (drift is then exactly 0)."""
    out = tmp_path / "eval.json"
    results = run(["eval", "--model", tiny_dir, "--adapter", str(trained / "adapter"), "--probes", "--knowledge",
                    "--task", "toolcall", "--scorer", "toolcall", "--split", "eval", "--limit", "3", "--drift",
                    "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert set(results["drift"]) == {"general", "task"} and min(results["drift"].values()) > 1e-6
    assert 0 <= results["retention_probes"]["overall"] <= 1
    assert set(results["knowledge_qa"]["all"]) == {"strict", "lenient"}
    assert 0 <= results["task:toolcall"]["toolcall"] <= 1


def test_eval_refuses_a_folder_that_is_not_an_adapter(tiny_dir, tmp_path):
    with pytest.raises(SystemExit, match="not a saved adapter"):
        run(["eval", "--model", tiny_dir, "--adapter", str(tmp_path)])
    with pytest.raises(SystemExit, match="--drift measures an adapter"):
        run(["eval", "--model", tiny_dir, "--drift"])


def test_diff_writes_escaped_html(tiny_dir, tmp_path):
    out = tmp_path / "diff.html"
    summary = run(["diff", "--model", tiny_dir, "--question", "Is 1 < 2 & <b>bold</b>?", "--demonstration", "Yes.",
                    "--max-new-tokens", "5", "--out", str(out)])
    page = out.read_text()
    assert page.startswith("<!doctype html>") and 'class="sdft-diff"' in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert summary["mean_divergence"] >= 0


def test_export_trl_maps_flags_and_refuses_what_trl_cannot_do(tmp_path):
    with pytest.warns(UserWarning, match="EMA adapter starts at zero"):
        config = run(["export-trl", "--data", "demo", "--divergence", "jsd", "--alpha", "0.2", "--top-k", "8",
                       "--top-k-side", "student", "--teacher", "ema", "--out", str(tmp_path)])
    kw = config["sdft_config"]
    assert (kw["distillation_mode"], kw["distillation_alpha"], kw["distillation_topk"]) == ("topk_logits", 0.2, 8)
    assert kw["teacher_model_kind"] == "ema" and (tmp_path / "train.jsonl").is_file()
    with pytest.raises(SystemExit, match="top_k_side='student'"):
        run(["export-trl", "--data", "demo", "--top-k", "8", "--out", str(tmp_path)])


@pytest.mark.slow
def test_eval_runs_lm_eval_tasks_through_the_harness_bridge(tiny_dir):
    pytest.importorskip("lm_eval", reason="lm-eval is an optional test dependency: pip install -e .[lmeval]")
    results = run(["eval", "--model", tiny_dir, "--harness-tasks", "sdft_lab_probes", "--limit", "4"])
    assert "retention_probes" not in results  # only what was asked for
    assert 0 <= results["lm_eval"]["sdft_lab_probes"]["acc"] <= 1



def test_data_describes_a_trl_file_and_train_maps_columns_from_yaml(tiny_dir, tmp_path, capsys):
    rows = [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "privileged_context": f"Answer {i}."} for i in range(3)]
    (tmp_path / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = run(["data", str(tmp_path / "trl.jsonl"), "--model", tiny_dir])
    assert text.startswith("3 examples, format trl") and "teacher prompt tokens: min" in text

    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps({"instruction": f"Q{i}?", "output": f"A{i}."}) + "\n"
                                                   for i in range(3)))
    (tmp_path / "run.yaml").write_text(f"method: sft\ndata: {tmp_path / 'alpaca.jsonl'}\n"
                                       "columns: {question: instruction, demonstration: output}\n"
                                       "train: {steps: 1, batch_size: 2, preflight: false}\n")
    result = run(["train", "--config", str(tmp_path / "run.yaml"), "--model", tiny_dir, "--out", str(tmp_path / "o")])
    assert len(result["history"]) == 1
    assert json.loads((tmp_path / "o" / "config.json").read_text())["columns"] == {"question": "instruction",
                                                                                  "demonstration": "output"}
    text = run(["data", str(tmp_path / "alpaca.jsonl"), "--model", tiny_dir, "--columns",
                "question=instruction,demonstration=output"])
    assert "format sdft (columns: question ← instruction, demonstration ← output)" in text
    with pytest.raises(SystemExit, match="cannot tell the format"):
        run(["data", str(tmp_path / "alpaca.jsonl"), "--model", tiny_dir])


def test_the_shipped_config_file_is_a_valid_run_config():
    from pathlib import Path

    from sdft_lab import RunConfig

    cfg = RunConfig.from_file(Path(__file__).parent.parent / "configs" / "quickstart.yaml")
    assert (cfg.method, cfg.train.steps, cfg.sdft.max_new_tokens, cfg.student.r) == ("sdft", 10, 64, 16)
    assert cfg.train.checkpoint_dir == "runs/quickstart/checkpoints"
