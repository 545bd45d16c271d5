"""lab.py, the notebooks' set-up: the one log line it silences, the workshop run, the answers table."""

from __future__ import annotations

import logging

from sdft_lab.lab import KernelsNotice, answers_table, setup, workshop_pair
from sdft_lab.recipes import workshop_knowledge


def test_setup_drops_bitsandbytes_kernels_notice_and_nothing_else(caplog, monkeypatch, tmp_path):
    """Break it fails on (made once): the filter matching every message of the logger."""
    monkeypatch.setenv("SDFT_LAB_RUNS", str(tmp_path))
    setup(), setup()
    logger = logging.getLogger(KernelsNotice.LOGGER)
    assert sum(isinstance(f, KernelsNotice) for f in logger.filters) == 1  # installed once, however often called
    level = logger.level  # models.quiet_peft raises this logger to ERROR once a student was added: not here
    logger.setLevel(logging.NOTSET)
    try:
        with caplog.at_level(logging.WARNING):
            logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                           "already `pip install kernels`", ModuleNotFoundError("No module named 'kernels'"))
            logger.warning("some other bitsandbytes warning")
            logging.getLogger("bitsandbytes.other").warning("Failed to load CPU gemm_4bit_forward elsewhere")
    finally:
        logger.setLevel(level)
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning",
                                                        "Failed to load CPU gemm_4bit_forward elsewhere"]


def test_workshop_pair_is_the_recipes_pair_and_smoke_shortens_both():
    """Breaks: smoke mode left out of either run (the notebooks' test would train for minutes), or the pair
    returned in the other order (00 would train SFT as its SDFT run)."""
    sdft, sft = workshop_knowledge()
    assert workshop_pair("bundled") == (sdft, sft)
    smoke, smoke_sft = workshop_pair("bundled", smoke=True)
    assert (smoke.method, smoke_sft.method) == ("sdft", "sft")
    assert (smoke.train.steps, smoke.sdft.max_new_tokens, smoke.train.batch_size) == (1, 8, 4)
    assert (smoke_sft.train.steps, smoke_sft.train.batch_size, smoke_sft.train.lr) == (1, 4, sft.train.lr)
    assert (smoke.sdft.guided, smoke.sdft.evidence_mask, smoke.train.lr) == (sdft.sdft.guided, sdft.sdft.evidence_mask,
                                                                             sdft.train.lr)
    assert workshop_pair("qwen2.5-1.5b") == workshop_knowledge(model="qwen2.5-1.5b")


def test_answers_table_escapes_model_text():
    page = answers_table(["Is 1 < 2?"], {"student": ["<script>alert(1)</script> yes"]}, accepted=["yes & no"])
    assert "<script>" not in page and "&lt;script&gt;" in page and "yes &amp; no" in page
    assert page.count("<tr>") == 2 and "<th style=\"text-align:left\">student</th>" in page


def test_answers_table_marks_the_answers_named_correct_in_their_own_column():
    """Break it fails on: the marks read by row only (every column of a right row ticked)."""
    page = answers_table(["q1", "q2"], {"a": ["x", "y"], "b": ["z", "w"]}, correct={"a": [False, True]})
    assert page.count("✓") == 1 and "✓ y" in page and "✓ w" not in page


def test_gpu_preset_picks_the_largest_cached_preset_that_fits_and_keeps_the_model_otherwise(capsys):
    """Breaks it fails on: the smallest fitting preset picked, a preset not in the cache picked (load would fail
    offline), the headroom left out (a preset needing all of the GPU's memory picked), a model the user named
    replaced."""
    from sdft_lab import PRESETS
    from sdft_lab.lab import HEADROOM, gpu_preset

    by_size = sorted(PRESETS, key=lambda n: PRESETS[n].vram_gib)
    largest = PRESETS[by_size[-1]].vram_gib
    assert gpu_preset("bundled", largest / HEADROOM, cached=lambda h: True) == by_size[-1]
    assert gpu_preset("bundled", largest, cached=lambda h: True) == by_size[-2]  # no headroom left for the largest
    not_largest = {PRESETS[n].hub_id for n in by_size[:-1]}
    assert gpu_preset("bundled", 1000, cached=lambda h: h in not_largest) == by_size[-2]
    assert gpu_preset("bundled", 1000, cached=lambda h: False) == "bundled"
    assert "no preset in the local hub cache fits" in capsys.readouterr().out
    assert gpu_preset("bundled", 1.0, cached=lambda h: True) == "bundled"  # nothing fits 1 GiB
    assert gpu_preset("qwen2.5-0.5b", 1000, cached=lambda h: True) == "qwen2.5-0.5b"  # the user's own choice kept


def test_gpu_preset_keeps_the_model_without_a_gpu(monkeypatch):
    import torch
    from sdft_lab.lab import gpu_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_preset("bundled", cached=lambda h: True) == "bundled"


def test_in_hub_cache_reads_the_local_cache_only(tmp_path, monkeypatch):
    """A model whose config.json is in the hub cache counts; one that is not does not (and nothing is fetched)."""
    import huggingface_hub.constants as constants
    from sdft_lab.lab import in_hub_cache

    repo = tmp_path / "models--org--there"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert in_hub_cache("org/there") and not in_hub_cache("org/elsewhere")
