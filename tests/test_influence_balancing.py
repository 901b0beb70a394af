"""Influence balancing: the truncated sensitivities through jbptt's reverse
scan, and the quick experiment's qualitative result."""

import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest

import jbptt
from experiments import influence_balancing as ib
from tests.helpers import quick_reproductions

# docs/design.md, "Reference facts":
# S(K) = Σ_{k<K} (Aᵏv)₁ for K = 1, 10, 20, 40, 41, ≥80.
SENSITIVITY = [
    (1, 1.0, 0.0),
    (10, 10.0, 0.0),
    (20, 16.5, 0.05),
    (40, 0.57, 0.01),
    (41, -0.22, 0.01),
    (80, -6.0, 1e-3),
    (200, -6.0, 1e-9),
]


@pytest.mark.parametrize("K, expected, tol", SENSITIVITY)
def test_truncated_sensitivity_numbers(K, expected, tol):
    assert ib.truncated_sensitivity(K) == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("K", [1, 10, 20, 40, 41, 80])
def test_sensitivity_from_reverse_scan_with_a_cut(K):
    # d s_{T-1}^(1) / dθ with the link K steps back cut: jbptt's reverse scan
    # (from_fn cell, generic per-step vjp) must give exactly S(K).
    T = 120
    cell = ib.cell()
    params = cell.init(None)
    h0 = cell.initial_state(params)
    xs = jnp.zeros((T, 1))
    ys = jnp.zeros((T,)).at[-1].set(1.0)  # read out s⁽¹⁾ at the last step only
    loss = lambda p, out, y: out * y
    w = jnp.ones((T,)).at[T - K].set(0.0)
    _, g = jbptt.value_and_grad(cell, loss)(params, h0, xs, ys, w)
    assert float(g["theta"]) == pytest.approx(ib.truncated_sensitivity(K), rel=1e-12)


def test_steady_state_optimum():
    A, v = ib.system()
    s1 = np.linalg.solve(np.eye(len(v)) - A, v)[0]
    assert s1 == pytest.approx(-6.0) and 1 / s1 == pytest.approx(ib.THETA_STAR)


@pytest.mark.xdist_group("quick_reproductions")  # one shared run
def test_quick_run_outputs_and_claim():
    # `python -m experiments.NAME --quick --out DIR`, run once for these tests
    # by tests/helpers.quick_reproductions; the JSON holds the summary main returns.
    out = quick_reproductions()
    for ext in ("csv", "json", "png"):
        assert (out / f"influence_balancing.{ext}").stat().st_size > 0
    with open(out / "influence_balancing.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"estimator", "t", "theta", "loss", "segment_length"}
    meta = json.loads((out / "influence_balancing.json").read_text())
    assert meta["config"]["quick"] and "jax" in meta["versions"]
    summary = meta["summary"]
    by = {s["estimator"]: s for s in summary}
    shortest = by["TBPTT(k=1)"]
    artbp = next(s for name, s in by.items() if name.startswith("ARTBP"))
    # the claim: the shortest truncation drifts away, ARTBP converges
    assert shortest["distance_to_optimum"] > 5 * artbp["distance_to_optimum"]
    assert shortest["final_theta"] > ib.THETA0  # pushed the wrong way
    assert artbp["distance_to_optimum"] < 0.1
    assert artbp["final_loss"] < shortest["final_loss"]


def test_quick_honours_flags_and_prints_summary(tmp_path, capsys):
    # --quick sets defaults only: the explicit --steps, --ks and --seed stay.
    argv = ["--quick", "--steps", "400", "--ks", "1", "--seed", "3"]
    summary = ib.main(argv + ["--out", str(tmp_path)])
    meta = json.loads((tmp_path / "influence_balancing.json").read_text())
    cfg = meta["config"]
    assert (cfg["steps"], cfg["ks"], cfg["seed"]) == (400, [1], 3)
    assert cfg["eta0"] == 3e-3  # the quick default
    assert meta["seed"] == 3 and meta["error"] is None
    assert [s["estimator"] for s in summary][0] == "TBPTT(k=1)"
    stdout = capsys.readouterr().out
    assert "summary:" in stdout and "wrote:" in stdout
    for ext in ("csv", "json", "png"):
        assert str(tmp_path / f"influence_balancing.{ext}") in stdout


@pytest.mark.parametrize(
    "bad", [["--steps", "0"], ["--eta0", "nan"], ["--alpha", "1"], ["--ks", "0"]]
)
def test_bad_flags_refused(bad):
    with pytest.raises(SystemExit):
        ib.parse_args(bad)


def test_es_study_pes_unbiased_truncated_es_biased():
    rows = ib.es_study(T=100, K=5, ns=(1, 16), seed=0)
    by = {(r["estimator"], r["N"]): r["rms_error"] for r in rows}
    exact = rows[0]["exact"]
    for name in ("PES(K=5)", "ES(full, pairs=1)"):
        # unbiased: the mean of 16 is ~4x closer than one draw (1/√N), loosely
        assert by[(name, 16)] < 0.5 * by[(name, 1)]
    # truncated ES(5) sees +sensitivity: its mean stays far from the exact one
    assert by[("truncated ES(K=5)", 16)] > 0.5 * abs(exact)
