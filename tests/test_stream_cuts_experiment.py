"""experiments.stream_cuts --quick: runs, writes its files, honours explicit
flags, and the ARTBP rows come out unbiased within their standard error."""

import json

import pytest

from experiments import stream_cuts


@pytest.mark.parametrize("k, m", [(4, 1), (8, 2), (32, 8)])
def test_the_two_laws_cut_each_stream_at_rate_one_over_k(k, m):
    c_s, c_o = stream_cuts.laws(k, m)
    assert c_s == pytest.approx(1 / (m * k))
    assert (1 - c_s) * (1 - c_o) == pytest.approx(1 - 1 / k)
    assert (c_o == 0) == (m == 1)


def test_quick_run(tmp_path, capsys):
    # --quick sets defaults only: the explicit --samples and --ms stay.
    argv = ["--quick", "--samples", "24", "--ms", "1,3", "--out", str(tmp_path)]
    rows = stream_cuts.main(argv)
    saved = json.loads((tmp_path / "stream_cuts.json").read_text())
    assert saved["config"]["samples"] == 24 and saved["config"]["ms"] == [1, 3]
    assert saved["rows"] == rows and (tmp_path / "stream_cuts.png").stat().st_size
    out = capsys.readouterr().out
    assert "summary:" in out and "wrote:" in out
    tbptt, shared, own = rows
    assert tbptt["rel_variance"] == 0.0 and tbptt["rel_bias"] > 0.05
    for r in (shared, own):  # unbiased: within 4 standard errors of zero
        assert r["rel_variance"] > 0 and r["rel_bias"] < 4 * r["bias_se"]
    assert own["updates"] < shared["updates"]  # m = 3: rarer updates
