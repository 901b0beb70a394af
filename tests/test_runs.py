"""Resumable result files and checkpoints: torn writes, SIGKILL mid-run,
changed configurations, and bitwise-identical resumed training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbptt
from jbptt import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------ result file ---


def test_append_resume_and_skip(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"T": 8, "ks": (1, 2)}, key=("cell", "k"))
    assert f.resumed == 0
    assert f.append({"cell": "elman", "k": 1, "bias": 0.25})
    assert f.append({"cell": "elman", "k": 2, "bias": 1 / 3})
    assert not f.append({"cell": "elman", "k": 1, "bias": 9.0})  # duplicate key
    g = runs.ResultFile(path, {"ks": [1, 2], "T": 8}, key=("cell", "k"))
    assert g.resumed == 2 and len(g) == 2
    assert g.done({"cell": "elman", "k": 2, "bias": 0.0})
    assert not g.done({"cell": "lstm", "k": 2})
    assert g.rows() == f.rows()
    assert g.rows()[1]["bias"] == 1 / 3  # floats round-trip exactly
    config, rows = runs.read_rows(path)
    assert config == {"T": 8, "ks": [1, 2]} and rows == g.rows()


def test_torn_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "r.jsonl"
    f = runs.ResultFile(path, {"seed": 1}, key=("i",))
    f.extend({"i": i, "x": float(i)} for i in range(3))
    with open(path, "ab") as fh:  # a write cut short by a kill
        fh.write(b'{"i": 3, "x": 3.')
    g = runs.ResultFile(path, {"seed": 1}, key=("i",))
    assert [r["i"] for r in g.rows()] == [0, 1, 2]
    assert g.append({"i": 3, "x": 3.0})
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1]) == {"i": 3, "x": 3.0}


def test_changed_config_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "r.jsonl"
    runs.ResultFile(path, {"T": 8, "seed": 0}, key=("i",)).append({"i": 0})
    with pytest.raises(ValueError, match=r"different configuration.*T: 8 -> 9"):
        runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",))
    other = runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",), on_mismatch="new")
    assert other.path != str(path) and other.config_hash[:10] in other.path
    assert len(other) == 0 and len(runs.read_rows(path)[1]) == 1  # untouched
    other.append({"i": 5})
    again = runs.ResultFile(path, {"T": 9, "seed": 0}, key=("i",), on_mismatch="new")
    assert again.path == other.path and again.resumed == 1
    fresh = runs.ResultFile(path, {"T": 9}, key=("i",), on_mismatch="overwrite")
    assert len(fresh) == 0 and runs.read_rows(path)[0] == {"T": 9}


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(config={"a": 1}, key="i"), TypeError, "key must be a sequence"),
        (dict(config={"a": 1}, key=("i",), on_mismatch="keep"), ValueError,
         "on_mismatch"),
        (dict(config=[1], key=("i",)), TypeError, "config must be a dict"),
        (dict(config={"f": object()}, key=("i",)), TypeError, "JSON-serialisable"),
    ],
)
def test_result_file_bad_arguments(tmp_path, kwargs, err, match):
    with pytest.raises(err, match=match):
        runs.ResultFile(tmp_path / "r.jsonl", **kwargs)


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a jbptt results file"):
        runs.ResultFile(path, {}, key=("i",))


# A stand-in sweep: rows of gradient statistics of ARTBP at several cut
# probabilities, one vmapped value_and_grad over link weights per row, each
# row appended as soon as it is done (and announced on stdout).
SWEEP_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jbptt
    from jbptt import runs, truncation

    out, delay = sys.argv[1], float(sys.argv[2])
    config = {"T": 12, "cs": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "n": 8, "seed": 3}
    rows = runs.ResultFile(out, config, key=("c",))
    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    p = model.init(jax.random.key(0), 1, 4)
    xs = jax.random.normal(jax.random.key(1), (12, 2, 1))
    h0 = model.cell.initial_state(p, (2,))
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)

    @jax.jit
    def stats(c, key):
        ws = jax.vmap(lambda k: truncation.artbp(k, 12, c))(jax.random.split(key, 8))
        g = jax.vmap(lambda w: grad_fn(p, h0, xs, xs, w)[1]["cell"]["W"])(ws)
        return jnp.mean(g), jnp.var(g)

    key = jax.random.key(config["seed"])
    for i, c in enumerate(config["cs"]):
        if rows.done({"c": c}):
            continue
        mean, var = stats(c, jax.random.fold_in(key, i))
        rows.append({"c": c, "mean": float(mean), "var": float(var)})
        print("row", i, flush=True)
        time.sleep(delay)
    print("done", flush=True)
    """
)


def _run_script(script, *args, kill_after_rows=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    seen = 0
    if kill_after_rows is not None:
        for line in proc.stdout:
            seen += line.startswith("row")
            if seen >= kill_after_rows:
                proc.send_signal(signal.SIGKILL)
                break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, seen, out, err


def test_sweep_killed_and_restarted_equals_uninterrupted(tmp_path):
    ref, resumed = tmp_path / "ref.jsonl", tmp_path / "resumed.jsonl"
    rc, _, out, err = _run_script(SWEEP_SCRIPT, ref, 0)
    assert rc == 0 and "done" in out, err
    rc, seen, _, _ = _run_script(SWEEP_SCRIPT, resumed, 0.5, kill_after_rows=2)
    assert rc == -signal.SIGKILL and seen == 2
    partial = runs.read_rows(resumed)[1]
    assert 2 <= len(partial) < 6
    rc, _, out, err = _run_script(SWEEP_SCRIPT, resumed, 0)
    assert rc == 0 and out.count("row") == 6 - len(partial), err
    rows = runs.read_rows(resumed)[1]
    assert sorted(r["c"] for r in rows) == sorted({r["c"] for r in rows})  # once
    assert sorted(rows, key=lambda r: r["c"]) == runs.read_rows(ref)[1]


# ------------------------------------------------------------ checkpoints ---


def _problem():
    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    params = model.init(jax.random.key(0), 2, 5)
    h0 = model.cell.initial_state(params, (3,))
    return model, params, h0


def _make_step(model, opt):
    grad_fn = jbptt.value_and_grad(model.cell, model.loss_fn)

    @jax.jit
    def step(state):
        # Online training: fresh random data each step, carried hidden state.
        key, sub = jax.random.split(state["key"])
        xs = jax.random.normal(sub, (6, 3, 2))
        ys = jnp.sum(xs, axis=-1, keepdims=True)
        (L, h), g = grad_fn(state["params"], state["h"], xs, ys)
        upd, opt_state = opt.update(g, state["opt"], state["params"])
        return dict(params=optax.apply_updates(state["params"], upd),
                    opt=opt_state, h=jax.lax.stop_gradient(h), key=key,
                    step=state["step"] + 1)

    return step


def _init_state(params, h0, opt):
    return dict(params=params, opt=opt.init(params), h=h0,
                key=jax.random.key(7), step=jnp.zeros((), jnp.int32))


def test_resumed_training_matches_uninterrupted_bitwise(tmp_path):
    model, params, h0 = _problem()
    opt = optax.adam(3e-2)
    step = _make_step(model, opt)
    config = {"lr": 3e-2, "steps": 6}

    full = _init_state(params, h0, opt)
    for _ in range(6):
        full = step(full)

    state = _init_state(params, h0, opt)
    with runs.Checkpointer(tmp_path / "ckpt", config=config) as ckpt:
        for _ in range(3):
            state = step(state)
            ckpt.save(state["step"], state)
    del state  # "killed": start again from the template only
    with runs.Checkpointer(tmp_path / "ckpt", config=config) as ckpt:
        template = _init_state(params, h0, opt)
        state = ckpt.restore(template)
    assert state["step"] == 3 and state["step"].dtype == jnp.int32
    assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
    assert type(state["opt"]) is type(template["opt"])
    while state["step"] < 6:
        state = step(state)

    flat_a, tree_a = jax.tree_util.tree_flatten(full)
    flat_b, tree_b = jax.tree_util.tree_flatten(state)
    assert tree_a == tree_b
    for a, b in zip(flat_a, flat_b, strict=True):
        if jax.dtypes.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpointer_keeps_latest_and_refuses_other_config(tmp_path):
    state = {"w": jnp.arange(4.0), "step": 0}
    with runs.Checkpointer(tmp_path, config={"lr": 1.0}, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(state)
        for s in range(1, 4):
            ckpt.save(s, {"w": state["w"] * s, "step": s})
        assert ckpt.latest_step() == 3
        back = ckpt.restore(state)
        assert back["step"] == 3 and isinstance(back["step"], int)
        np.testing.assert_array_equal(ckpt.restore(state, step=2)["w"],
                                      np.arange(4.0) * 2)
        with pytest.raises(ValueError, match="step must be an int"):
            ckpt.save(-1, state)
    with pytest.raises(ValueError, match=r"different configuration.*lr: 1.0 -> 0.5"):
        runs.Checkpointer(tmp_path, config={"lr": 0.5})
    with pytest.raises(ValueError, match="max_to_keep"):
        runs.Checkpointer(tmp_path / "x", max_to_keep=0)


def test_online_training_resumed_from_checkpoint_matches_bitwise(tmp_path):
    # jbptt.train.train on a stream, chunk by chunk, ARTBP with a fresh key
    # per chunk; checkpoint after each chunk; "killed" after two chunks.
    from jbptt import estimators, train

    model = jbptt.readout(jbptt.cells.elman(), output_size=1)
    opt, est = optax.adam(1e-2), estimators.artbp(0.25)
    stream = jax.random.normal(jax.random.key(1), (4, 24, 2, 1))  # 4 chunks

    def init_state():
        params = model.init(jax.random.key(0), 1, 4)
        return dict(params=params, opt=opt.init(params),
                    h=model.cell.initial_state(params, (2,)),
                    key=jax.random.key(3), chunk=0, losses=jnp.zeros(4))

    def run_chunk(state):
        key, sub = jax.random.split(state["key"])
        xs = stream[state["chunk"]]
        hist = train.train(model.cell, model.loss_fn, state["params"], xs, xs,
                           opt, est, key=sub, h0=state["h"], opt_state=state["opt"])
        losses = state["losses"].at[state["chunk"]].set(jnp.mean(hist.loss))
        return dict(params=hist.params, opt=hist.opt_state, h=hist.h, key=key,
                    chunk=state["chunk"] + 1, losses=losses)

    full = init_state()
    while full["chunk"] < 4:
        full = run_chunk(full)

    state = init_state()
    with runs.Checkpointer(tmp_path / "ckpt", config={"c": 0.25}) as ckpt:
        while state["chunk"] < 2:
            state = run_chunk(state)
            ckpt.save(state["chunk"], state)
    with runs.Checkpointer(tmp_path / "ckpt", config={"c": 0.25}) as ckpt:
        state = ckpt.restore(init_state())
    assert state["chunk"] == 2
    while state["chunk"] < 4:
        state = run_chunk(state)

    assert state["chunk"] == full["chunk"]
    np.testing.assert_array_equal(jax.random.key_data(state["key"]),
                                  jax.random.key_data(full["key"]))
    for k in ("params", "opt", "h", "losses"):
        for a, b in zip(jax.tree_util.tree_leaves(state[k]),
                        jax.tree_util.tree_leaves(full[k]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
