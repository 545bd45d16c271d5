"""jsonl I/O: round trip, the bundled sets, and errors that name the file and line."""

import pytest

from sdft_lab import DataError, Example, load_dataset, load_jsonl, save_jsonl


def test_round_trip(tmp_path):
    examples = [Example("Q1?", "D1.", id="a", answer="x"), Example("Q2?", "D2.", id="b", metadata={"k": 1})]
    save_jsonl(examples, tmp_path / "set.jsonl")
    assert load_jsonl(tmp_path / "set.jsonl") == examples
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_bundled_demo_sets_load():
    train, heldout = load_dataset("demo"), load_dataset("demo-heldout")
    assert len(train) >= 8 and len(heldout) == len(train)
    assert all(ex.answer and ex.answer in ex.demonstration for ex in train + heldout)


@pytest.mark.parametrize("lines, message", [
    (['{"question": "Q", "demonstration": "D"}', '{broken'], r"set.jsonl:2: not valid JSON"),
    (['["a list"]'], r"set.jsonl:1: expected a JSON object, got list"),
    (['{"question": "", "demonstration": "D"}'], r"set.jsonl:1: field 'question' is missing or empty"),
    (['{"question": "Q"}'], r"set.jsonl:1: field 'demonstration' is missing or empty"),
    (['{"question": 3, "demonstration": "D"}'], r"set.jsonl:1: field 'question' must be str, got int"),
    (['{"question": "Q", "demonstration": "D", "colour": 1}'], r"set.jsonl:1: unknown field"),
    (['{"id": "x", "question": "Q", "demonstration": "D"}', '',
      '{"id": "x", "question": "Q2", "demonstration": "D2"}'], r"set.jsonl:3: duplicate id 'x' \(first seen on line 1\)"),
    ([''], r"set.jsonl: the file holds no examples"),
    (['{"question": "Q", "demonstration": "D", "references": "one"}'], r"set.jsonl:1: field 'references' must be list"),
    (['{"question": "Q", "demonstration": "D", "references": [""]}'], r"set.jsonl:1: field 'references' must be a list of non"),
])
def test_bad_files_name_the_line(tmp_path, lines, message):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file.*demo"):
        load_jsonl(tmp_path / "nope.jsonl")
