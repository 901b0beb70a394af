"""The segmenting benchmark's ``--quick`` form runs and writes its table."""

import json

from benchmarks import bench_segments


def test_bench_segments_quick_runs(tmp_path):
    result = bench_segments.main(
        ["--quick", "--cells", "elman", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "bench_segments.json").read_text())
    assert saved["config"]["quick"] is True and len(result["rows"]) == 1
    variants = result["rows"][0]["variants"]
    # T = 20: S = 16 and ⌈√20⌉ = 5 segment, longer S would not
    assert {"default", "all steps", "S=16", "S=sqrt", "jax"} == set(variants)
    assert variants["all steps"]["speedup_vs_all_steps"] == 1.0
    for v in variants.values():
        assert v["ms"] > 0 and v["temp_mib"] >= 0
    text = (tmp_path / "bench_segments.md").read_text()
    assert "| elman | 20, 4, 3, 8 |" in text
