"""The benchmark's ``--quick`` form runs and writes its outputs."""

import json

import pytest

from benchmarks import bench_grad


def test_bench_quick_runs(tmp_path):
    result = bench_grad.main(
        ["--quick", "--no-torch", "--cells", "elman", "--out", str(tmp_path)]
    )
    for name in ("RESULTS.md", "results.json", "results_grad.csv", "speedups.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["quick"] is True
    assert {r["cell"] for r in result["grad"]} == {"elman"}
    for r in result["grad"]:
        assert r["jbptt_ms"] > 0 and r["jax_ms"] > 0 and r["gemm_limit_ms"] > 0
    variants = {r["variant"] for r in result["long"]}
    assert "jbptt checkpoint='sqrt'" in variants
    assert all(r["peak_MB"] > 0 for r in result["long"])
    assert result["sweep"] and result["sweep"][0]["K"] == 8
    text = (tmp_path / "RESULTS.md").read_text()
    assert "vs jax" in text and "checkpoint" in text


def test_bench_rejects_unknown_part(tmp_path):
    with pytest.raises(ValueError, match="--parts"):
        bench_grad.main(["--quick", "--parts", "nope", "--out", str(tmp_path)])


def test_bench_case_in_fresh_processes_gives_medians(tmp_path):
    rows = bench_grad.bench_grad(
        [(6, 2, 3, 4)], ["gru"], 1, False, lambda s: None, processes=3
    )
    (row,) = rows
    assert row["processes"] == 3 and row["cell"] == "gru"
    lo, hi = map(float, row["speedup_vs_jax_range"].split("–"))
    assert lo <= row["speedup_vs_jax"] <= hi


def test_median_row_takes_the_median_of_each_figure():
    runs = [{"cell": "elman", "T": 5, "jbptt_ms": x, "speedup_vs_jax": 10 / x}
            for x in (1.0, 4.0, 2.0)]  # fmt: skip
    row = bench_grad._median_row(runs)
    assert row["jbptt_ms"] == 2.0 and row["speedup_vs_jax"] == 5.0
    assert row["T"] == 5 and row["speedup_vs_jax_range"] == "2.50–10.00"
