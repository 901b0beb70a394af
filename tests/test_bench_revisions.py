"""The first-call and before/after benchmarks' ``--quick`` forms run and write
their outputs."""

import json
import pathlib

from benchmarks import compare_revisions, first_call

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_first_call_counts_compiles_and_seconds(tmp_path):
    out = first_call.main(["--quick", "--estimator", "artbp", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "first_call_artbp.json").read_text())
    assert saved == out
    assert out["compiles"] == len(out["buckets"]) >= 1  # one gradient pass a bucket
    assert out["first_call_s"] <= out["all_calls_s"]
    assert all(s >= 0 for s in out["train_s"])


def test_compare_revisions_tabulates_every_case(tmp_path):
    text = compare_revisions.main(
        ["--quick", "--base", str(ROOT), "--new", str(ROOT), "--out", str(tmp_path)]
    )
    assert (tmp_path / "compare_revisions.md").read_text() == text
    online = [line for line in text.splitlines() if "| tbptt |" in line]
    grad = [line for line in text.splitlines() if line.startswith("| elman |")]
    assert online and grad  # a row per case, each with a positive ratio
    assert all(float(line.split("|")[-2]) > 0 for line in online + grad)
