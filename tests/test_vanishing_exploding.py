"""experiments.vanishing_exploding: CLI, outputs, clipping (its notebook:
tests/test_notebooks.py)."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from experiments import vanishing_exploding as ve
from jbptt import cells

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_help():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.vanishing_exploding", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out and "--out" in out
    assert "(default: 600)" in out  # --train-steps' full-run default is shown


def test_quick_writes_outputs(tmp_path, capsys):
    # --quick sets defaults only: the explicit --seed and --ks are kept.
    argv = ["--quick", "--seed", "3", "--ks", "1", "4", "16", "--out", str(tmp_path)]
    report = ve.main(argv)
    stdout = capsys.readouterr().out
    assert "summary:" in stdout and "wrote:" in stdout
    assert str(tmp_path / "vanishing_exploding.json") in stdout
    for suffix in (
        "lags.csv",
        "summary.csv",
        "clipping.csv",
        "tbptt.csv",
        "lags.png",
        "clipping.png",
        "tbptt.png",
    ):
        assert (tmp_path / f"vanishing_exploding_{suffix}").stat().st_size > 0
    saved = json.loads((tmp_path / "vanishing_exploding.json").read_text())
    assert saved["seed"] == 3 and "jax" in saved["versions"]
    assert saved["error"] is None
    cfg = report["config"]
    assert cfg["ks"] == [1, 4, 16] and cfg["train_steps"] == 40  # quick default
    assert len(saved["summary"]) == len(cfg["families"]) * len(cfg["radii"])
    rows = _read_csv(tmp_path / "vanishing_exploding_lags.csv")
    assert len(rows) == len(saved["summary"]) * cfg["max_lag"]
    # Gradients vanish for tanh Elman at ρ = 0.5 and grow for identity at 1.5.
    by = {(s["family"], s["radius"]): s for s in saved["summary"]}
    assert by[("elman_tanh", 0.5)]["slope"] < -0.3
    assert by[("elman_identity", 1.5)]["slope"] > 0.1
    # Global-norm clipping bounds every SGD update by lr · threshold.
    clip = [
        r
        for r in _read_csv(tmp_path / "vanishing_exploding_clipping.csv")
        if r["method"] == "global_norm"
    ]
    assert max(float(r["update_norm"]) for r in clip) <= cfg["lr"] * cfg[
        "clip_norm"
    ] * (1 + 1e-9)
    # The quick form shows the effect: without clipping training diverges,
    # with either clipping it does not.
    c = saved["clipping"]
    assert c["none"]["nonfinite_steps"] > 0 or c["none"]["max_grad_norm"] > 1e6
    for method in ("global_norm", "value"):
        assert c[method]["nonfinite_steps"] == 0


def test_bad_flags_refused(capsys):
    for bad in (["--ks", "256"], ["--lr", "nan"], ["--max-lag", "500"]):
        with pytest.raises(SystemExit):
            ve.parse_args(bad)
        assert bad[0] in capsys.readouterr().err


def _exploding_gradient():
    k_init, k_w, k_data = jax.random.split(jax.random.key(0), 3)
    model = jbptt.readout(cells.elman("relu"), output_size=1)
    params = model.init(k_init, 2, 16)
    params["cell"] = ve.rescale_recurrent("elman_relu", params["cell"], 1.5, k_w)
    xs, ys = ve.adding_problem(k_data, 30, 8)
    loss_fn = lambda p, o, y: jnp.mean(  # noqa: E731
        y[..., 1] * (model.predict(p, o)[..., 0] - y[..., 0]) ** 2
    )
    (_, _), g = jax.jit(jbptt.value_and_grad(model.cell, loss_fn))(
        params, model.cell.initial_state(params, (8,)), xs, ys
    )
    return params, g


def test_clipping_bounds_the_update():
    params, g = _exploding_gradient()
    raw = float(optax.tree.norm(g))
    assert raw > 100.0  # the gradient did explode
    lr, c, v = 0.01, 1.0, 0.1
    for method, bound in (("global_norm", lr * c), ("none", None), ("value", None)):
        opt = ve.make_optimizer(method, lr, c, v)
        u, _ = jax.jit(lambda g, p, opt=opt: opt.update(g, opt.init(p), p))(g, params)
        norm = float(optax.tree.norm(u))
        if method == "global_norm":
            assert norm <= bound * (1 + 1e-12)
            np.testing.assert_allclose(norm, bound, rtol=1e-12)  # at the threshold
        elif method == "none":
            np.testing.assert_allclose(norm, lr * raw, rtol=1e-12)
        else:  # element-wise: every entry within lr · v
            leaves = jax.tree_util.tree_leaves(u)
            assert max(float(jnp.max(jnp.abs(a))) for a in leaves) <= lr * v * (
                1 + 1e-12
            )
    with pytest.raises(ValueError, match="Unknown clipping method"):
        ve.make_optimizer("adaptive", lr, c, v)


def test_rescale_recurrent_sets_spectral_radius():
    key = jax.random.key(0)
    p = cells.gru().init(key, 2, 5)
    q = ve.rescale_recurrent("gru", p, 0.7, key)
    for block in jnp.split(q["weight_hh"], 3):
        np.testing.assert_allclose(ve.spectral_radius(block), 0.7, rtol=1e-10)
    e = ve.rescale_recurrent("elman_tanh", cells.elman().init(key, 2, 5), 1.5, key)
    np.testing.assert_allclose(ve.spectral_radius(e["W"]), 1.5, rtol=1e-10)
