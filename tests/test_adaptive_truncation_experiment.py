"""experiments.adaptive_truncation --quick: the exact relative bias of the
chosen TBPTT(k) is at most δ at every re-estimation point."""

import json

from experiments import adaptive_truncation


def test_quick_run_meets_delta(tmp_path):
    rows = adaptive_truncation.main(
        ["--quick", "--delta", "0.3", "--out", str(tmp_path)]
    )
    assert len(rows) >= 2
    assert all(r["exact_rel_bias"] <= r["delta"] + 1e-12 for r in rows)
    saved = json.loads((tmp_path / "adaptive_truncation.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "adaptive_truncation.png").exists()
