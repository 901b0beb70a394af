"""The diagonal benchmark's ``--quick`` form runs and writes its outputs."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import pytest

import jbptt
from benchmarks import bench_diagonal

COLUMNS = ("scan", "assoc", "jbptt", "floor")


def _finite_positive(row, key):
    value = row[key]
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_diagonal_quick_writes_every_file_and_column(tmp_path, capsys):
    result = bench_diagonal.main(["--quick", "--out", str(tmp_path)])
    assert "wrote:" in capsys.readouterr().out
    for name in ("bench_diagonal.json", "bench_diagonal_grad.csv",
                 "bench_diagonal_sweep.csv", "bench_diagonal.md"):  # fmt: skip
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "bench_diagonal.json").read_text())
    env = saved["environment"]
    assert env["jax"] == jax.__version__ and env["backend"] and env["device_name"]
    assert env["date_utc"] and saved["config"]["seed"] == bench_diagonal.SEED
    assert saved["config"]["quick"] is True and saved["config"]["K"] == 8
    grad, sweep = result["grad"], result["sweep"]
    assert {r["cell"] for r in grad} == {"lru", "min_gru"} == {r["cell"] for r in sweep}
    for r in grad:
        for k in COLUMNS:
            for suffix in ("_ms", "_over_floor", "_vs_scan", "_temp_mib"):
                assert _finite_positive(r, k + suffix), (r["cell"], k + suffix)
        assert r["floor_over_floor"] == 1.0 and r["scan_vs_scan"] == 1.0
        assert _finite_positive(r, "forward_temp_mib")
        assert _finite_positive(r, "jbptt_temp_over_forward")
        # every column computes the same loss and gradient as lax.scan's autodiff
        for k in ("assoc", "jbptt"):
            assert r[f"{k}_loss_err"] <= 1e-5 and r[f"{k}_grad_err"] <= 1e-4, k
    for r in sweep:
        for key in ("one_ms", "multi_ms", "multi_over_one", "multi_temp_mib"):
            assert _finite_positive(r, key), key
    with open(tmp_path / "bench_diagonal_grad.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "jbptt_over_floor" in rows[0]
    text = (tmp_path / "bench_diagonal.md").read_text()
    assert "jbptt / floor" in text and "scan / jbptt" in text and "multi / one" in text
    assert "| lru | 32 | 2 | 3 | 4 |" in text


def test_bench_diagonal_floor_and_associative_scan_are_what_they_say():
    # float64 (conftest): the associative scan is the recurrence to rounding,
    # and the floor is the same program with h_t = b_t.
    cell = jbptt.cells.lru(r_min=0.5, r_max=0.9)
    params = cell.init(jax.random.key(1), 3, 4)
    h0 = cell.initial_state(params, (2,)) + 0.5j
    xs = jax.random.normal(jax.random.key(2), (9, 2, 3))
    ys = jax.random.normal(jax.random.key(3), (9, 2, 3))
    (L, h_T), _ = bench_diagonal.ref_value_and_grad(cell)(params, h0, xs, ys)
    L_a, h_a = bench_diagonal.associative_loss(cell)(params, h0, xs, ys)
    assert abs(float(L_a - L)) <= 1e-12 * abs(float(L))
    assert float(jnp.max(jnp.abs(h_a - h_T))) <= 1e-12
    L_f, h_f = bench_diagonal.floor_loss(cell)(params, h0, xs, ys)
    _, b = cell.diagonal.gates(params, xs)
    assert jnp.allclose(h_f, b[-1]) and float(L_f) != float(L)


def test_bench_diagonal_adds_a_column_per_diagonal_scan_method(tmp_path, monkeypatch):
    # The DiagonalScan columns appear when jbptt has the strategy; here a
    # stand-in (the generic reverse scan) plays it.
    made = []

    def stand_in(method="auto", chunk=None):
        made.append(method)
        if method == "blocked":  # a method refused here loses its column only
            raise ValueError("blocked: not on this backend")
        return jbptt.ReverseScan()

    monkeypatch.setattr(jbptt, "DiagonalScan", stand_in, raising=False)
    argv = ["--quick", "--cells", "min_gru", "--parts", "grad", "--repeats", "1"]
    result = bench_diagonal.main(argv + ["--out", str(tmp_path)])
    assert made == list(bench_diagonal.METHODS)
    assert result["config"]["diagonal_scan"] is True
    (row,) = result["grad"]
    for m in ("auto", "sequential", "associative"):
        assert _finite_positive(row, f"diag_{m}_ms")
        assert row[f"diag_{m}_grad_err"] <= 1e-4
    assert "diag_blocked_ms" not in row
    assert (
        "diag_blocked skipped: ValueError: blocked: not on this backend" in row["notes"]
    )
    text = (tmp_path / "bench_diagonal.md").read_text()
    assert all(f"| diag_{m} |" in text for m in ("auto", "sequential", "associative"))
    assert "blocked: not on this backend" in text


@pytest.mark.parametrize(
    "bad, match", [(["--parts", "nope"], "--parts"), (["--cells", "gru"], "--cells")]
)
def test_bench_diagonal_refuses_unknown_parts_and_cells(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        bench_diagonal.main(["--quick", *bad, "--out", str(tmp_path)])


def test_bench_diagonal_csv_keeps_columns_that_only_some_rows_have(tmp_path):
    # a column left out of one row (a refused strategy) stays in the CSV
    rows = [{"cell": "lru", "a_ms": 1.0}, {"cell": "min_gru", "a_ms": 2.0, "b_ms": 3.0}]
    bench_diagonal._write_csv(tmp_path / "rows.csv", rows)
    with open(tmp_path / "rows.csv") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == ["cell", "a_ms", "b_ms"]
    assert read[0]["b_ms"] == "nan" and read[1]["b_ms"] == "3.0"
