"""The bench's target lines (bench/step_time.py) from a table of measured rows, without running a bench."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("step_time", Path(__file__).parents[1] / "bench" / "step_time.py")
step_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_time)


def test_targets_are_the_measured_ratios_with_met_or_not():
    phases = {"sample_s": 2.0, "teacher_s": 0.5, "student_fwd_s": 0.5, "backward_s": 0.8, "optim_s": 0.2}
    rows = [{"variant": "sdft", "prompts": 4, "median_s": 4.0, "peak_rss_mib": 1100, "phases_s": phases,
             "sample_to_generate": 2.0 / 3.6, "ratio_to_trl-full": 4.0 / 7.0},
            {"variant": "trl-full", "prompts": 4, "median_s": 7.0, "peak_rss_mib": 1000, "phases_s": {}},
            {"variant": "generate", "prompts": 4, "median_s": 3.6, "peak_rss_mib": 900, "phases_s": {}}]
    floors = {4: step_time.floor_row(rows, 4)}
    assert floors[4]["floor_s"] == 3.6 + 0.5 + 0.5 + 0.8 + 0.2
    lines = step_time.check_targets(rows, floors)
    assert len(lines) == 4
    assert "generate s / sample s) = 1.80 (target >= 1.5): met" in lines[0]
    assert "SDFT step / TRL step = 0.57 (target <= 0.7): met" in lines[1]
    assert "peak RSS = 1.10 (target <= 1.1): met" in lines[2]
    assert "floor = 0.71 (target <= 1.1): met" in lines[3]
    rows[0]["median_s"] = 6.5  # slower than 1.1× the floor
    assert step_time.check_targets(rows, floors)[3].endswith("NOT met")
