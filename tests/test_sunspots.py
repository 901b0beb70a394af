"""Sunspots experiment: baselines and the quick run's claim (the RNN beats the
naive forecast on the held-out tail)."""

import csv
import json

import numpy as np
import pytest

from experiments import sunspots
from tests.helpers import quick_reproductions


def test_ar_forecast_recovers_an_ar_process():
    rng = np.random.default_rng(0)
    y = np.zeros(400)
    for t in range(2, 400):
        y[t] = 0.3 + 1.2 * y[t - 1] - 0.5 * y[t - 2] + 0.01 * rng.standard_normal()
    pred = sunspots.ar_forecast(y, 300, 2)
    truth = 0.3 + 1.2 * y[299:399] - 0.5 * y[298:398]
    np.testing.assert_allclose(pred, truth, atol=0.01)


def test_naive_forecast_is_previous_value():
    y = np.arange(10.0)
    np.testing.assert_array_equal(sunspots.naive_forecast(y, 7), [6.0, 7.0, 8.0])


@pytest.mark.xdist_group("quick_reproductions")  # one shared run
def test_quick_run_beats_naive():
    # `python -m experiments.NAME --quick --out DIR`, run once for these tests
    # by tests/helpers.quick_reproductions; its JSON is the dict main returns.
    out = quick_reproductions()
    meta = json.loads((out / "sunspots.json").read_text())
    for ext in ("csv", "json", "png"):
        assert (out / f"sunspots.{ext}").stat().st_size > 0
    with open(out / "sunspots.csv") as f:
        models = {r["model"] for r in csv.DictReader(f)}
    assert len(models) == 4
    rmse = meta["test_rmse"]
    assert meta["data"]["n_test"] == 60
    for name, value in rmse.items():
        if name.startswith("GRU"):
            assert value < 0.9 * rmse["naive"], name
    assert rmse["AR(9)"] < rmse["naive"]


def test_bad_flag(tmp_path):
    with pytest.raises(SystemExit):
        sunspots.main(["--k", "100", "--out", str(tmp_path)])


def test_quick_honours_flags_and_prints_summary(tmp_path, capsys):
    # --quick sets defaults only: the explicit --epochs and --seed stay.
    argv = ["--quick", "--epochs", "2", "--seed", "3", "--out", str(tmp_path)]
    meta = sunspots.main(argv)
    assert (meta["config"]["epochs"], meta["config"]["seed"]) == (2, 3)
    assert meta["config"]["seeds"] == 1  # the quick default
    assert meta["seed"] == 3 and meta["error"] is None
    assert {r["seed"] for r in meta["rows"]} == {None, 3}
    stdout = capsys.readouterr().out
    assert "test RMSE" in stdout and "wrote:" in stdout
    for ext in ("csv", "json", "png"):
        assert str(tmp_path / f"sunspots.{ext}") in stdout


@pytest.mark.parametrize("bad", [["--lr", "-1"], ["--alpha", "0.5"], ["--seeds", "0"]])
def test_bad_flags_refused(bad):
    with pytest.raises(SystemExit):
        sunspots.parse_args(bad)
