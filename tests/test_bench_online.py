"""The online-training benchmark's ``--quick`` form runs and writes its table."""

import json

from benchmarks import bench_online


def test_bench_online_quick_runs(tmp_path):
    result = bench_online.main(
        ["--quick", "--no-torch", "--cells", "elman", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "bench_online.json").read_text())
    assert saved["config"]["quick"] is True and len(result["rows"]) == 1
    row = result["rows"][0]
    for name in (*bench_online.ESTIMATORS, "jax_detach"):
        assert row[name]["tokens_per_s"] > 0, name
    for name in bench_online.ESTIMATORS:
        assert row[name]["padding"] >= 1.0
        assert row[name]["compiles_timed"] == 0  # the timed pass compiles nothing
    assert row["tbptt"]["buckets"] == [4]
    text = (tmp_path / "bench_online.md").read_text()
    assert "ARTBP poly" in text and "| elman | 4 |" in text


def test_peers_are_timed_in_a_process_of_their_own():
    import os

    assert bench_online._in_own_process(os.getpid) != os.getpid()
    assert bench_online._in_own_process(divmod, 7, 2) == (3, 1)
