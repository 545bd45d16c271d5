"""The prompt builder: documented layout, the length policy, and the chat-template fallback."""

import warnings

import pytest

from sdft_lab import Example, PromptConfig, preview
from sdft_lab.prompts import PAPER_TEMPLATE, PLAIN_CHAT, TRIM_MARK, fill, left_pad, render_chat, student_ids, teacher_ids


def test_paper_template_renders_as_documented():
    text = fill(PAPER_TEMPLATE, "Q?", "D.")
    assert text == ("Q?\n\nThis is an example for a response to the question:\nD.\n\n"
                    "Now answer with a response of your own, including the thinking process:")


def test_fill_leaves_braces_in_the_texts_alone():
    assert fill("{question}|{demonstration}", "a {demonstration} b", "{question}") == "a {demonstration} b|{question}"


def test_template_must_have_both_fields():
    with pytest.raises(ValueError, match="demonstration"):
        PromptConfig(teacher_template="{question} only")


def test_student_and_teacher_prompts_use_the_chat_template(tokenizer, example):
    cfg = PromptConfig()
    student = tokenizer.decode(student_ids(tokenizer, example, cfg))
    teacher = tokenizer.decode(teacher_ids(tokenizer, example, cfg))
    assert student == render_chat(tokenizer, example.question)
    assert student.endswith("<|im_start|>user\nWhat is the capital of Velmora?<|im_end|>\n<|im_start|>assistant\n")
    assert teacher == render_chat(tokenizer, fill(PAPER_TEMPLATE, example.question, example.demonstration))
    assert example.demonstration not in student and example.demonstration in teacher


def test_long_demonstration_is_trimmed_never_the_question(tokenizer):
    question = "In which year did the glass bridge of Orsk open, and who designed it? " * 3
    ex = Example(id="long", question=question, demonstration="The bridge opened in 1901. " * 200)
    cfg = PromptConfig(max_teacher_prompt_tokens=160)
    with pytest.warns(UserWarning, match="demonstration trimmed"):
        ids = teacher_ids(tokenizer, ex, cfg)
    text = tokenizer.decode(ids)
    assert len(ids) <= 160
    assert question in text and TRIM_MARK in text and "Now answer with a response" in text


def test_question_too_long_is_an_error(tokenizer):
    ex = Example(id="huge", question="word " * 400, demonstration="short")
    with pytest.raises(ValueError, match="huge.*never cut"):
        teacher_ids(tokenizer, ex, PromptConfig(max_teacher_prompt_tokens=300))
    with pytest.raises(ValueError, match="huge.*never cut"):
        student_ids(tokenizer, ex, PromptConfig(max_prompt_tokens=300))


def test_under_the_limit_nothing_is_trimmed(tokenizer, example):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = teacher_ids(tokenizer, example, PromptConfig())
    assert example.demonstration in tokenizer.decode(ids)


def test_plain_fallback_without_chat_template(tokenizer, example):
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.warns(UserWarning, match="no chat template"):
            text = render_chat(tokenizer, example.question)
    finally:
        tokenizer.chat_template = saved
    assert text == PLAIN_CHAT.format(content=example.question)


def test_left_pad_aligns_prompt_ends():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_preview_shows_both_prompts_with_counts(tokenizer, example):
    text = preview(tokenizer, example)
    assert "STUDENT prompt (" in text and "TEACHER prompt (" in text and "for the demonstration" in text
