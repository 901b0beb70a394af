"""experiments.pes_variance --quick: runs, writes its JSON and figure, and the
exact estimators come out exact."""

import json

from experiments import pes_variance


def test_quick_run(tmp_path):
    rows = pes_variance.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "pes_variance.json").read_text())["rows"]
    assert saved == rows and (tmp_path / "pes_variance.png").exists()
    full = [r for r in rows if r["estimator"] == "TBPTT" and r["K"] == 16]
    assert full[0]["rel_bias"] < 1e-10 and full[0]["rel_variance"] == 0.0
    es_rows = [r for r in rows if r["estimator"] in ("PES", "truncated ES")]
    assert all(r["rel_variance"] > 0 for r in es_rows)  # perturbations cost
