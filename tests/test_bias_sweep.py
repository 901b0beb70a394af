"""The main job's quick form: files, columns, and the headline claim."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import bias_sweep


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias_sweep")
    # --seed given with --quick is honoured (quick sets defaults only).
    argv = ["--quick", "--seed", "3", "--out", str(out), "--no-progress"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rows = bias_sweep.main(argv)
    return out, rows, buf.getvalue()


def test_writes_csv_json_png(quick_run):
    out, rows, stdout = quick_run
    with open(out / "bias_sweep.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == bias_sweep.COLUMNS
        csv_rows = list(reader)
    assert len(csv_rows) == len(rows) > 0
    assert {r["cell"] for r in csv_rows} == {"elman"}
    assert {r["family"] for r in csv_rows} == {"full", *bias_sweep.FAMILIES}
    assert len({r["train_step"] for r in csv_rows}) == 2  # trajectory points
    meta = json.loads((out / "bias_sweep.json").read_text())
    assert meta["seed"] == 3 and meta["config"]["quick"] is True
    assert meta["config"]["T"] == 16 and meta["error"] is None
    assert "summary (train step" in stdout and "wrote:" in stdout
    for name in ("bias_sweep.csv", "bias_sweep.png", "bias_sweep.json"):
        assert str(out / name) in stdout
    assert meta["versions"]["jax"] and meta["versions"]["jbptt"]
    assert set(meta["headline"]) == {"elman"}
    png = (out / "bias_sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_artbp_unbiased_tbptt_biased(quick_run):
    _, rows, _ = quick_run
    artbp = [r for r in rows if r["family"].startswith("artbp")]
    contains_zero = [r["rel_bias_lo"] == 0.0 for r in artbp]
    # Nominal 95% intervals: nearly all must contain the true bias, 0.
    assert np.mean(contains_zero) >= 0.85, [r["estimator"] for r in artbp]
    for r in rows:
        if r["family"] == "full":
            assert r["rel_bias"] < 1e-5 and r["rel_variance"] == 0
    for cell in ("elman",):
        at_init = [r for r in rows if r["cell"] == cell and r["train_step"] == 0]
        for k in (1, 2):
            (tb,) = [r for r in at_init if r["estimator"] == f"tbptt(k={k})"]
            assert tb["rel_variance"] == 0 and np.isnan(tb["rel_bias_lo"])
            assert tb["rel_bias"] > 0.1
            # Beyond the noise: above every ARTBP interval at the same depth.
            for r in at_init:
                if r["family"].startswith("artbp") and r["k"] == max(k, 2):
                    assert tb["rel_bias"] > r["rel_bias_hi"], (cell, k, r)
    # Bias of TBPTT falls to (float) zero at k = T.
    for r in rows:
        if r["family"] == "tbptt" and r["k"] == 16:
            assert r["rel_bias"] < 1e-4


def test_help_and_bad_flags():
    res = subprocess.run(
        [sys.executable, "-m", "experiments.bias_sweep", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--quick" in res.stdout and "--out" in res.stdout
    assert "(default: 64)" in res.stdout  # --T's default is shown
    for bad in (
        ["--train-steps", "1", "--points", "3"],  # would repeat the init point
        ["--ks", "1", "128"],  # k > T
        ["--lr", "nan"],
        ["--seed", "-1"],
        ["--T", "0"],
        ["--samples", "2"],
        ["--delays", "99"],
        ["--cells", "transformer"],
    ):
        with pytest.raises(SystemExit):
            bias_sweep.parse_args(bad)


def test_quick_sets_defaults_only():
    args = bias_sweep.parse_args(["--quick", "--T", "32", "--points", "1"])
    assert (args.T, args.points, args.hidden) == (32, 1, 8)  # hidden: quick
    assert args.ks == [1, 2, 4, 32]
    full = bias_sweep.parse_args([])
    assert (full.T, full.hidden, full.points) == (64, 32, 3)


def test_poly_tail_matches_depth():
    for k in (2.0, 5.0, 20.0):
        e = bias_sweep.poly_tail_for_depth(k, 64)
        assert abs(e.expected_depth(64) - k) < 1e-6
    assert bias_sweep.poly_tail_for_depth(64.0, 64) is None


def test_artbp_families_are_matched_to_tbptt_depth():
    """Every ARTBP row sits at the depth of the TBPTT(k) it is compared with,
    on the same convention E[min(L, T)] (k < T only)."""
    T = 16
    specs = bias_sweep.make_estimators([1, 2, 4, 8, 16], T)
    for family, k, e in specs:
        if family.startswith("artbp"):
            assert 1 < k < T
            assert e.expected_depth(T) == pytest.approx(k, rel=1e-9), e.name
    fams = {f for f, _, _ in specs}
    assert {"tbptt", "artbp-geom", "artbp-poly"} <= fams


def test_delayed_sum_task():
    import jax

    from experiments import tasks

    task = tasks.delayed_sum((0, 3))
    xs, ys = task.sample(jax.random.key(0), 8, 2)
    expected = xs[:, :, 0] + np.concatenate([np.zeros((3, 2)), xs[:5, :, 1]])
    np.testing.assert_allclose(ys[..., 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="delays"):
        tasks.delayed_sum((-1,))
    with pytest.raises(ValueError, match="Unknown cell"):
        tasks.make_model("transformer", 1)


def test_cli_flag_types():
    # the experiments' shared flag types (experiments/_cli.py)
    import argparse

    from experiments import _cli

    assert _cli.positive_int(np.int32(3)) == 3 and _cli.positive_int("4") == 4
    assert _cli.positive_float(np.float32(0.5)) == 0.5
    for fn, bad in [
        (_cli.positive_int, True),
        (_cli.positive_int, "0"),
        (_cli.nonneg_int, -1),
        (_cli.finite_float, "nan"),
        (_cli.positive_float, float("inf")),
        (_cli.probability, 1.5),
        (_cli.positive_float, np.bool_(True)),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            fn(bad)


def test_cli_finish_writes_json_when_a_step_fails(tmp_path, capsys):
    from experiments import _cli

    run = _cli.Run()
    run.step("plot", lambda: 1 / 0)
    with pytest.raises(SystemExit) as exc:
        run.finish(str(tmp_path / "x.json"), {"n": 1}, config={"a": 1}, seed=5)
    assert exc.value.code == 1
    saved = json.loads((tmp_path / "x.json").read_text())
    assert "plot failed: ZeroDivisionError" in saved["error"] and saved["seed"] == 5
    assert "FAILED" in capsys.readouterr().out


def test_cli_log_axis_falls_back_to_linear():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments import _cli

    fig, ax = plt.subplots()
    assert _cli.set_log_scale(ax, [0.0, -1.0, np.nan]) is not None
    assert ax.get_yscale() == "linear"
    assert _cli.set_log_scale(ax, [0.0, 1e-3, 10.0]) is None
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] == pytest.approx(5e-4)
    plt.close(fig)


def test_cell_variants_and_seeds():
    """One LRU per --r-max, named by it; the cells there before keep their
    seed index (the sorted order of elman, gru, lstm), so their rows do not
    change when cells are added."""
    from experiments import tasks

    args = bias_sweep.parse_args(
        ["--cells", "lru", "elman", "min_lstm", "--r-max", "0.9", "0.99"]
    )
    variants = bias_sweep.cell_variants(args)
    assert [v[0] for v in variants] == [
        "lru(r_max=0.9)",
        "lru(r_max=0.99)",
        "elman",
        "min_lstm",
    ]
    assert all(v[2].diagonal is not None for v in variants if v[1] != "elman")
    for name in ("elman", "gru", "lstm"):
        assert tasks.CELL_ORDER.index(name) == sorted(("elman", "gru", "lstm")).index(
            name
        )
    assert "r_max" in bias_sweep.run_config(args)
    default = bias_sweep.run_config(bias_sweep.parse_args([]))
    assert "r_max" not in default and "r_min" not in default  # same hash as before
    assert default["cells"] == ["elman", "lstm"]


def test_lru_model_reads_the_complex_state():
    """The sweep's LRU model: V [O, 2H] on [Re h; Im h], C and D unread."""
    import jax
    import jax.numpy as jnp

    from experiments import tasks

    model = tasks.make_model(bias_sweep.jbptt.cells.lru(r_max=0.9), 1)
    p = model.init(jax.random.key(0), 3, 5)
    assert p["readout"]["V"].shape == (1, 10) and p["cell"]["B_re"].shape == (5, 3)
    h0 = model.cell.initial_state(p, (2,))
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3))
    ys = jnp.zeros((6, 2, 1))
    (_, _), g = bias_sweep.jbptt.value_and_grad(model.cell, model.loss_fn)(
        p, h0, xs, ys
    )
    assert float(jnp.abs(g["cell"]["C_re"]).max()) == 0.0
    assert float(jnp.abs(g["cell"]["B_re"]).max()) > 0.0


@pytest.mark.parametrize(
    "bad",
    [
        ["--cells", "lru", "--r-max", "1.5"],
        ["--cells", "lru", "--r-min", "0.95", "--r-max", "0.9"],
        ["--cells", "lru", "--r-max", "0"],
    ],
)
def test_bad_ring(bad):
    with pytest.raises(SystemExit):
        bias_sweep.parse_args(bad)
