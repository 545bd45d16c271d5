"""The lm-eval bridge, offline: the project's own task and a constructed one, checked against an
independent re-scoring of the same items; adapters applied; clear errors."""

import json
import sys

import pytest
import torch

# before the imports below: the GPU box (docs/gpu.md) has neither lm-eval nor plotly, and pytest collects
# every module before it filters by marker
pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e .[lmeval] (make test installs it)")

from sdft_lab.eval import load_probes
from sdft_lab.eval.lm_eval import compare, evaluate
from sdft_lab.models import load_adapter
from sdft_lab.models import add_student, teacher_view
from sdft_lab.inspect.plots import benchmark_retention

from conftest import tiny_llama

pytestmark = pytest.mark.slow  # the 135M model, processes or notebooks: not in make test-fast


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub or dataset downloads, whatever the task."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@torch.no_grad()
def reference(model, tok, items: list[dict]) -> dict[str, float]:
    """acc and acc_norm as lm-eval defines them, computed directly: the option after "Question: …\\nAnswer:"
    and a space, scored by its summed token log-prob (acc) or that per character of the option (acc_norm)."""
    acc, acc_norm = [], []
    for it in items:
        context = f"Question: {it['question']}\nAnswer:"
        n_context = len(tok(context).input_ids)
        lls = []
        for option in it["options"]:
            ids = tok(context + " " + option).input_ids
            logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            lls.append(sum(logp[i - 1, ids[i]].item() for i in range(n_context, len(ids))))
        norm = [ll / len(o) for ll, o in zip(lls, it["options"])]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == it["answer"]))
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == it["answer"]))
    return {"acc": sum(acc) / len(acc), "acc_norm": sum(acc_norm) / len(acc_norm)}


def probes(n: int) -> list[dict]:
    return [vars(p) for p in load_probes()[:n]]


def metrics(result: dict, task: str) -> dict[str, float]:
    return {k: result[task][k] for k in ("acc", "acc_norm")}


@pytest.mark.parametrize("which", ["tiny", "bundled"])
def test_project_task_matches_independent_scoring(which, bundled, tmp_path, monkeypatch):
    base, tok = bundled
    model = tiny_llama(tok) if which == "tiny" else base
    monkeypatch.chdir(tmp_path)  # the task's data must resolve from any working directory
    out = evaluate(model, tok, ["sdft_lab_probes"], limit=8, batch_size=5)
    assert set(out) == {"sdft_lab_probes"}
    assert metrics(out, "sdft_lab_probes") == pytest.approx(reference(model, tok, probes(8)), abs=1e-9)
    assert 0 < out["sdft_lab_probes"]["acc_stderr"] < 0.5


def test_saved_adapter_is_applied(bundled, tmp_path):
    tok = bundled[1]
    trained = add_student(tiny_llama(tok))
    torch.manual_seed(1)
    for name, p in trained.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it move the outputs
            p.data.normal_(0, 0.5)
    trained.save_pretrained(str(tmp_path / "adapter"))
    items = probes(16)
    with teacher_view(trained, "base"):
        expected_base = reference(trained, tok, items)
    expected_adapter = reference(trained, tok, items)
    assert expected_adapter != expected_base, "precondition: this adapter changes the answers"

    adapted = load_adapter(tiny_llama(tok), tmp_path / "adapter")  # a fresh copy of the same base
    with_adapter = evaluate(adapted, tok, ["sdft_lab_probes"], limit=16)
    with teacher_view(adapted, "base"):
        without = evaluate(adapted, tok, ["sdft_lab_probes"], limit=16)
    assert metrics(with_adapter, "sdft_lab_probes") == pytest.approx(expected_adapter, abs=1e-9)
    assert metrics(without, "sdft_lab_probes") == pytest.approx(expected_base, abs=1e-9)
    assert not adapted.training  # evaluate() left the mode as it found it


def test_include_path_task_with_local_json(bundled, tmp_path):
    tok = bundled[1]
    model = tiny_llama(tok, seed=3)
    items = [{"question": f"Which word names a {kind}?", "options": opts, "answer": ans}
             for kind, opts, ans in [("colour", ["green", "table", "seven"], 0), ("number", ["run", "nine"], 1),
                                     ("animal", ["cloud", "pencil", "otter", "blue"], 2),
                                     ("fruit", ["plum", "brick"], 0), ("tool", ["soup", "hammer", "Tuesday"], 1)]]
    data = tmp_path / "data" / "words.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "words.yaml").write_text(
        "task: test_words\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: options\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    out = evaluate(model, tok, ["test_words", "sdft_lab_probes"], include_path=str(tasks), limit=5)
    assert set(out) == {"test_words", "sdft_lab_probes"}
    assert metrics(out, "test_words") == pytest.approx(reference(model, tok, items), abs=1e-9)


def test_unknown_task_is_a_clear_error(bundled):
    with pytest.raises(ValueError, match=r"Unknown lm-eval task\(s\): 'hellaswagg' \(did you mean hellaswag, .*"
                                         r"the project's \(sdft_lab_probes\) and your own \(pass include_path="):
        evaluate(bundled[0], bundled[1], ["hellaswagg"])
    with pytest.raises(ValueError, match="tasks is empty"):
        evaluate(bundled[0], bundled[1], [])


def test_missing_lm_eval_and_adapter_are_clear_errors(bundled, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_adapter(bundled[0], tmp_path)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install -e \.\[lmeval\]"):
        evaluate(bundled[0], bundled[1], ["sdft_lab_probes"])


def test_compare_and_figure_by_hand():
    base = {"hellaswag": {"acc": 0.30, "acc_stderr": 0.01, "acc_norm": 0.40, "acc_norm_stderr": 0.02},
            "gsm8k": {"exact_match,strict-match": 0.10, "exact_match_stderr,strict-match": 0.03}}
    adapter = {"hellaswag": {"acc": 0.31, "acc_stderr": 0.01, "acc_norm": 0.35, "acc_norm_stderr": 0.02},
               "gsm8k": {"exact_match,strict-match": 0.20, "exact_match_stderr,strict-match": 0.04}}
    probe_acc = {"base": {"logic": 0.5, "overall": 0.4}, "adapter": {"logic": 0.25, "overall": 0.45}}
    rows = compare(base, adapter, probe_acc)
    assert [(r["source"], r["name"], r["metric"]) for r in rows] == [
        ("lm-eval", "hellaswag", "acc_norm"), ("lm-eval", "gsm8k", "exact_match,strict-match"),
        ("probes", "logic", "acc"), ("probes", "overall", "acc")]
    assert [r["delta"] for r in rows] == pytest.approx([-0.05, 0.10, -0.25, 0.05])
    assert (rows[0]["base_stderr"], rows[1]["adapter_stderr"], rows[2]["base_stderr"]) == (0.02, 0.04, None)
    fig = benchmark_retention(rows)
    assert [t.name for t in fig.data] == ["base", "adapter"]
    assert list(fig.data[1].y) == [0.35, 0.20, 0.25, 0.45]
    with pytest.raises(ValueError, match="'gsm8k' is in the base results but not in the adapter's"):
        compare(base, {"hellaswag": adapter["hellaswag"]})
