"""The trajectories-per-hour benchmark (evals.perf.trajectories) on the tiny models on the CPU:
ours, the engine variant measured again (the experimental prefill thread), and the reference loop
each finish their trajectories, and the breakdown adds up; a level that outlasts --stall-dump-s
prints the engine's thread stacks."""

from __future__ import annotations

import json

from evals.perf import trajectories


def test_the_tiny_benchmark_measures_ours_the_variant_and_the_reference(tmp_path, capsys):
    out = tmp_path / "figures.json"
    args = ["--tiny", "--levels", "2", "--prefill-beside-decode-levels", "2", "--reference-runs", "1"]
    assert trajectories.main([*args, "--planner-tokens", "24", "--critic-tokens", "12", "--out", str(out)]) == 0

    figures = json.loads(out.read_text())
    rows = {row["label"]: row for row in figures["rows"]}
    assert set(rows) == {"ours-2", "ours-2-prefill-beside", "reference-1"}
    for label in ("ours-2", "ours-2-prefill-beside"):
        row = rows[label]
        assert row["trajectories"] == 2
        assert row["prefills"] == 2 * 5  # one plan and four critic calls per trajectory
        assert 4 <= row["generator_calls"] <= 2 * 4  # four images each; a pipeline call may batch two
        assert 0 < row["vlm_s"] <= row["seconds"] + 0.5
        assert row["overlap_s"] <= min(row["vlm_s"], row["generator_s"]) + 1e-6
    assert figures["reference_median_per_hour"] == rows["reference-1"]["per_hour"]
    assert "ours-2-prefill-beside" in capsys.readouterr().out


def test_a_level_that_outlasts_the_stall_limit_prints_the_engine_threads(tmp_path, capsys):
    args = ["--tiny", "--levels", "2", "--reference-runs", "0", "--stall-dump-s", "0.05"]
    assert trajectories.main([*args, "--planner-tokens", "24", "--critic-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "ours-2 still running after 0 s; engine and generator threads:" in out
    assert "--- vlm-continuous" in out and "tools/llm/continuous.py" in out
