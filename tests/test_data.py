"""jsonl I/O: round trip, the bundled sets, and errors that name the file and line."""

import json

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
    (['{"question": "Q", "demonstration": "D", "demonstation": "D2"}'],
     r"set.jsonl:1: unknown field 'demonstation'; did you mean 'demonstration'"),
    (['{"questions": "Q", "demonstration": "D"}'], r"set.jsonl:1: unknown field 'questions'; did you mean 'question'"),
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


# ---------------------------------------------------------------------------- formats people have (issue: bring your own data)

QUESTION, DEMO = "What is the capital of Velmora?", "The capital of Velmora is Quillhaven."


def write(path, rows, newline="\n", bom=False):
    text = newline.join(json.dumps(r) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@pytest.mark.parametrize("row, system", [
    ({"question": QUESTION, "demonstration": DEMO}, None),
    ({"prompt": QUESTION, "privileged_context": DEMO}, None),
    ({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
      "privileged_context": DEMO}, "Be brief."),
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION},
                   {"role": "assistant", "content": DEMO}]}, "Be brief."),
    ({"prompt": QUESTION, "completion": DEMO}, None),
    ({"prompt": [{"role": "user", "content": QUESTION}], "completion": [{"role": "assistant", "content": DEMO}]}, None),
], ids=["sdft", "trl-text", "trl-chat", "chat", "prompt-completion", "prompt-completion-chat"])
def test_every_format_loads_into_the_same_example(tmp_path, row, system):
    ex, = load_dataset(write(tmp_path / "set.jsonl", [row]))
    assert (ex.question, ex.demonstration, ex.system, ex.id) == (QUESTION, DEMO, system, "set-1")


def test_a_trl_completion_becomes_a_reference_and_the_format_can_be_forced(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"prompt": QUESTION, "privileged_context": DEMO, "completion": "Quillhaven."}])
    ex, = load_dataset(path)
    assert ex.references == ["Quillhaven."]
    with pytest.raises(DataError, match="t.jsonl:1: field 'question' is missing"):
        load_dataset(path, format="sdft")  # forced: these columns are not this project's fields


def test_column_mapping_and_a_missing_column(tmp_path):
    path = write(tmp_path / "alpaca.jsonl", [{"instruction": QUESTION, "output": DEMO, "source": "hand"}])
    with pytest.warns(UserWarning, match=r"\['source'\] are not Example fields; kept"):
        ex, = load_dataset(path, question="instruction", demonstration="output")
    assert (ex.question, ex.demonstration, ex.metadata) == (QUESTION, DEMO, {"source": "hand"})
    with pytest.raises(DataError, match="alpaca.jsonl:1: no column 'answer_text' to read 'answer'"):
        load_dataset(path, question="instruction", demonstration="output", answer="answer_text")
    with pytest.raises(DataError, match=r"cannot tell the format from the columns \['instruction', 'output', 'source'\]"):
        load_dataset(path)


def test_bom_and_crlf_load_other_encodings_and_binary_say_what_to_do(tmp_path):
    ex, = load_dataset(write(tmp_path / "win.jsonl", [{"question": QUESTION, "demonstration": DEMO}], "\r\n", bom=True))
    assert ex.question == QUESTION
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"question": "Q", "demonstration": "D"}\n{"question": "Café?", "demonstration": "Oui."}\n'
                      .encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8 \(byte 0xe9 at offset \d+\)\. Re-save the file as UTF-8"):
        load_dataset(latin)
    binary = tmp_path / "model.jsonl"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(DataError, match="model.jsonl: binary content"):
        load_dataset(binary)


def test_exact_duplicate_rows_are_kept_with_one_warning_naming_their_lines(tmp_path):
    rows = [{"question": QUESTION, "demonstration": DEMO}, {"question": "Q2?", "demonstration": "D2."}]
    with pytest.warns(UserWarning, match=r"2 row\(s\) appear more than once.*dup.jsonl:1, .*dup.jsonl:3"):
        examples = load_dataset(write(tmp_path / "dup.jsonl", rows + rows))
    assert len(examples) == 4


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "d"}], r"turns \['user', 'assistant', 'user', 'assistant'\].*multi-turn"),
    ([{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "b"}], "non-text content"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}],
     "tool calls"),
])
def test_unsupported_chats_say_what_is_not_supported(tmp_path, messages, message):
    with pytest.raises(DataError, match=message):
        load_dataset(write(tmp_path / "chat.jsonl", [{"messages": messages}]))


def test_a_bad_row_loads_nothing_and_json_and_csv_files_load(tmp_path):
    path = write(tmp_path / "half.jsonl", [{"question": QUESTION, "demonstration": DEMO}, {"question": "Q2?"}])
    with pytest.raises(DataError, match="half.jsonl:2"):
        load_dataset(path)
    (tmp_path / "set.json").write_text(json.dumps([{"prompt": QUESTION, "completion": DEMO}]))
    (tmp_path / "set.csv").write_text(f'question,demonstration\n"{QUESTION}","{DEMO}"\n', encoding="utf-8")
    for name in ("set.json", "set.csv"):
        ex, = load_dataset(tmp_path / name)
        assert (ex.question, ex.demonstration) == (QUESTION, DEMO), name


def test_a_datasets_object_and_a_split(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is an optional extra (pip install datasets)")
    ds = datasets.Dataset.from_list([{"prompt": QUESTION, "privileged_context": DEMO}])
    ex, = load_dataset(ds)
    assert (ex.question, ex.demonstration) == (QUESTION, DEMO)
    both = datasets.DatasetDict({"train": ds, "test": ds})
    assert load_dataset(both, split="test")[0].question == QUESTION
    with pytest.raises(DataError, match=r"DatasetDict; name one of its splits with split= \(\['test', 'train'\]\)"):
        load_dataset(both)


def test_a_parquet_file_loads_and_a_bad_row_names_its_row(tmp_path):
    """docs/data.md's promise: .parquet, read through `datasets` (optional). Breaks it fails on (made once): the
    .parquet branch removed from read_rows (the file is then read as text and rejected as binary)."""
    datasets = pytest.importorskip("datasets", reason="datasets is an optional extra (pip install datasets)")
    rows = [{"prompt": QUESTION, "completion": DEMO}, {"prompt": "Q2?", "completion": "A2."}]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "set.parquet")
    first, second = load_dataset(tmp_path / "set.parquet")
    assert (first.question, first.demonstration, second.question) == (QUESTION, DEMO, "Q2?")
    datasets.Dataset.from_list([rows[0], {"prompt": "Q3?", "completion": ""}]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet row 1"):
        load_dataset(tmp_path / "bad.parquet")
