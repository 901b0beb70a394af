"""Shared test helpers: problems for every cell and pytree comparisons."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

import jbptt
from jbptt import cells

tree_util = jax.tree_util


def rel_err(a, b) -> float:
    """max |a − b| / max |b| over a whole pytree (0 when both are zero)."""
    diffs = tree_util.tree_leaves(
        tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)
    )
    scale = tree_util.tree_leaves(tree_util.tree_map(lambda y: jnp.max(jnp.abs(y)), b))
    num, den = float(max(diffs)), float(max(scale))
    return num / den if den > 0 else num


def tree_allclose(a, b, rtol=1e-10) -> bool:
    same = tree_util.tree_structure(a) == tree_util.tree_structure(b)
    return same and rel_err(a, b) <= rtol


def _fn_init(key, input_size, hidden_size):
    k1, k2 = jax.random.split(key)
    return {
        "A": 0.5 * jax.random.normal(k1, (hidden_size, hidden_size)) / hidden_size**0.5,
        "B": jax.random.normal(k2, (hidden_size, input_size)),
    }


def _fn_step(params, h, x):
    # A two-part state (a pytree): h and a leaky trace of it.
    h, trace = h
    h_new = jnp.tanh(h @ params["A"].T + x @ params["B"].T)
    trace = 0.9 * trace + h_new
    return (h_new, trace), h_new * trace


def _fn_state(params, batch_shape=()):
    z = jnp.zeros(tuple(batch_shape) + (params["A"].shape[0],))
    return (z, z)


def fn_cell():
    return cells.from_fn(_fn_init, _fn_step, _fn_state, name="leaky_trace")


CELLS = {
    "elman_tanh": lambda: cells.elman("tanh"),
    "elman_identity": lambda: cells.elman("identity"),
    "elman_relu": lambda: cells.elman("relu"),
    "elman_nobias": lambda: cells.elman("identity", bias=False),
    "lstm": cells.lstm,
    "gru": cells.gru,
    "flax_lstm": lambda: cells.from_flax(nn.LSTMCell(5, param_dtype=jnp.float64)),
    "flax_gru": lambda: cells.from_flax(nn.GRUCell(5, param_dtype=jnp.float64)),
    "flax_optimized_lstm": lambda: cells.from_flax(
        nn.OptimizedLSTMCell(5, param_dtype=jnp.float64)
    ),
    "from_fn": fn_cell,
}


def problem(cell, T=7, batch=(3,), I=4, H=5, O=2, seed=0, loss="mse"):
    """A readout model on random data, with a non-zero h0."""
    model = jbptt.readout(cell, O, loss)
    keys = jax.random.split(jax.random.key(seed), 4)
    params = model.init(keys[0], I, H)
    xs = jax.random.normal(keys[1], (T, *batch, I))
    if loss == "mse":
        ys = jax.random.normal(keys[2], (T, *batch, O))
    else:
        ys = jax.random.randint(keys[2], (T, *batch), 0, O)
    h0 = model.cell.initial_state(params, batch)
    h0 = tree_util.tree_map(
        lambda a: 0.3 * jax.random.normal(keys[3], a.shape, a.dtype), h0
    )
    return model, params, h0, xs, ys


def random_w(T, seed=1):
    """Link weights in [0, 2] with some exact zeros (cuts)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    w = jax.random.uniform(k1, (T,), minval=0.0, maxval=2.0)
    return jnp.where(jax.random.bernoulli(k2, 0.3, (T,)), 0.0, w)


ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict:
    """The environment of a Python process (or notebook kernel) the suite
    starts: this checkout's jbptt and experiments first on the path, wherever
    it runs, and the suite's compilation cache (conftest.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cache = os.environ.get(
        "JBPTT_TEST_CACHE", str(ROOT / ".pytest_cache/jax-compilation")
    )
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


@functools.cache
def quick_reproductions() -> Path:
    """Runs the quick forms of influence_balancing, char_lm and sunspots once
    per test process: ``main(["--quick", "--out", DIR])`` of each, in one
    Python process of their own (float32, as a user runs them, with the
    suite's compilation cache); the experiments' tests check that one run's
    files instead of running every quick form again.

    Returns:
        The output folder, holding each experiment's CSV, JSON and PNG.
    """
    out = Path(tempfile.mkdtemp(prefix="jbptt_reproductions_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    env = child_env()
    names = ("influence_balancing", "char_lm", "sunspots")
    run = "importlib.import_module('experiments.{}').main(['--quick', '--out', out])"
    code = "import importlib, sys\nout = sys.argv[1]\n"
    code += "\n".join(run.format(n) for n in names)
    subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


SEEDED_CELLS = {
    "elman": lambda: cells.elman("tanh"),
    "gru": cells.gru,
    "lstm": cells.lstm,
}


def seeded_problem(cell_name, T, B=2, H=3, I=2):
    """A readout model (MSE, output 2) on fixed-seed data with a zero h0."""
    model = jbptt.readout(SEEDED_CELLS[cell_name](), output_size=2)
    params = model.init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, 2))
    h0 = model.cell.initial_state(params, (B,))
    return model, params, h0, xs, ys


def flat(tree):
    """All leaves of a pytree as one vector."""
    return jnp.concatenate([jnp.ravel(a) for a in tree_util.tree_leaves(tree)])


def accumulate():
    """An optax transformation that applies no update and sums the gradients
    it sees in its state: the sum of all segment gradients at fixed params."""
    import optax

    def init(params):
        return tree_util.tree_map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        zeros = tree_util.tree_map(jnp.zeros_like, grads)
        return zeros, tree_util.tree_map(jnp.add, state, grads)

    return optax.GradientTransformation(init, update)


def char_lm_numbers(out) -> tuple[list[dict], dict]:
    """The CSV rows and the JSON of a char LM run in folder ``out``, less
    what the clock and the command line set (wall-clock times, --out)."""
    import csv
    import json

    with open(Path(out) / "char_lm.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.pop("seconds")]
    meta = json.loads((Path(out) / "char_lm.json").read_text())
    for field in ("utc_time", "seconds"):
        meta.pop(field)
    meta["config"].pop("out")
    for s in meta["summary"]:
        s.pop("train_seconds")
    return rows, meta
