"""Sweeps split over devices give the same numbers as on one device.

Several CPU devices need ``jax_num_cpu_devices`` set before jax starts, so
the multi-device checks run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jbptt import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(script: str, n_devices: int) -> dict:
    """Run ``script`` with ``n_devices`` CPU devices; it prints one JSON line."""
    prelude = textwrap.dedent(
        f"""
        import jax
        jax.config.update("jax_num_cpu_devices", {n_devices})
        jax.config.update("jax_enable_x64", True)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    # keep conftest's compile flags; the device count comes from the prelude
    flags = env.pop("XLA_FLAGS", "").split()
    flags = [f for f in flags if "host_platform_device_count" not in f]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# The sweep engine on 4 CPU devices against 1: estimator configurations ×
# samples (here 1 + 1 + 2 × 16 rows) split over the devices, statistics
# computed from the gathered rows.
ENGINE = """
import json
import jax.numpy as jnp
import numpy as np
import jbptt
from jbptt import estimators, sweep, truncation

model = jbptt.readout(jbptt.cells.elman(), output_size=1)
p = model.init(jax.random.key(0), 2, 6)
xs = jax.random.normal(jax.random.key(1), (16, 3, 2))
ys = jnp.sum(xs, axis=-1, keepdims=True)
h0 = model.cell.initial_state(p, (3,))
es = [estimators.full(), estimators.tbptt(3), estimators.artbp(0.3),
      estimators.artbp(truncation.poly_tail(4.0))]
out = {"devices": len(jax.devices())}
for name, mesh in [("single", None), ("mesh1", 1), ("all", len(jax.devices()))]:
    run = sweep.make_sweep(model.cell, model.loss_fn, es, 16, chunk=4, mesh=mesh)
    g, stats = run(p, h0, xs, ys, jax.random.key(9))
    out[name] = [np.asarray(g).tobytes().hex()] + [
        np.asarray(stats[f]).tobytes().hex() for f in sorted(stats)]
    out[name + "_rel_bias"] = np.asarray(stats["rel_bias"]).tolist()
print(json.dumps(out))
"""


def test_sharded_sweep_equals_single_device():
    out = run_with_devices(ENGINE, 4)
    assert out["devices"] == 4
    assert out["all"] == out["single"] == out["mesh1"]  # bitwise
    assert out["single_rel_bias"][0] < 1e-12  # full BPTT: exact
    assert out["single_rel_bias"][1] > 1e-3  # TBPTT(3): biased


def test_map_rows_one_device_matches_vmap():
    x = jax.random.normal(jax.random.key(0), (11, 3))
    y = jax.random.normal(jax.random.key(1), (11, 3))

    def fn(a, b):
        return {"dot": a @ b, "prod": a * b}

    ref = jax.vmap(fn)(x, y)
    for mesh in (None, sharding.make_mesh(1)):
        for chunk in (4, 64):
            out = jax.jit(
                lambda a, b, m=mesh, c=chunk: sharding.map_rows(
                    fn, (a, b), chunk=c, mesh=m
                )
            )(x, y)
            np.testing.assert_allclose(out["dot"], ref["dot"], rtol=1e-14)
            np.testing.assert_allclose(out["prod"], ref["prod"], rtol=1e-14)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: sharding.make_mesh(0), ValueError, "between 1 and the"),
        (
            lambda: sharding.make_mesh(len(jax.devices()) + 1),
            ValueError,
            "jax_num_cpu_devices",
        ),
        (lambda: sharding.make_mesh([]), TypeError, "list of jax devices"),
        (
            lambda: sharding.map_rows(jnp.sin, [jnp.ones(2)]),
            TypeError,
            "tuple of arrays",
        ),
        (
            lambda: sharding.map_rows(jnp.add, (jnp.ones(2), jnp.ones(3))),
            ValueError,
            "one leading",
        ),
        (
            lambda: sharding.map_rows(jnp.sin, (jnp.ones(2),), chunk=0),
            ValueError,
            "chunk must be an int",
        ),
        (
            lambda: sharding.map_rows(
                jnp.sin,
                (jnp.ones(2),),
                mesh=Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b")),
            ),
            ValueError,
            "mesh must be 1-D",
        ),
    ],
)
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()


# Data parallel on 2 CPU devices: jbptt.value_and_grad on inputs split along
# the batch (XLA partitions the scans and sums the gradients), and
# train(mesh=2) in two chunked calls: TBPTT (Elman), ARTBP with split long
# segments and resets (LSTM), per-stream cuts on shared ARTBP cuts (GRU);
# against one device, float64.
DATA_PARALLEL = """
import json
import jax.numpy as jnp
import numpy as np
import optax
import jbptt
from jbptt import estimators, sharding

def rel(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return max(float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
               for x, y in zip(a, b))

resets = np.zeros((40, 4), bool)
resets[17, 1] = True
runs = {
    "elman": (estimators.tbptt(6), {}),
    "lstm": (estimators.artbp_matched(8),
             dict(buckets=jbptt.train.Buckets(top=8), resets=resets)),
    "gru": (estimators.artbp_matched(12),
            dict(stream_cuts=estimators.artbp_matched(6))),
}
out, errs = {"devices": len(jax.devices())}, {}
for name, (est, kw) in runs.items():
    model = jbptt.readout(getattr(jbptt.cells, name)(), output_size=2)
    p = model.init(jax.random.key(0), 3, 5)
    xs = jax.random.normal(jax.random.key(1), (40, 4, 3))
    ys = jax.random.normal(jax.random.key(2), (40, 4, 2))
    h0 = model.cell.initial_state(p, (4,))
    opt = optax.adam(1e-2)

    def part(sl):
        return {k: (v[sl] if k == "resets" else v) for k, v in kw.items()}

    def run(mesh):
        a = jbptt.train.train(model.cell, model.loss_fn, p, xs[:23], ys[:23], opt,
                              est, key=jax.random.key(3), flush=False, mesh=mesh,
                              **part(slice(0, 23)))
        return jbptt.train.train(model.cell, model.loss_fn, None, xs[23:], ys[23:],
                                 opt, est, state=a.state, mesh=mesh,
                                 **part(slice(23, None)))

    one, two = run(None), run(2)
    errs[name + "_train"] = max(rel(two.params, one.params), rel(two.loss, one.loss),
                                rel(two.h, one.h))
    out[name + "_same_segments"] = one.length.tolist() == two.length.tolist()
    out[name + "_advanced"] = int(two.advanced_steps)
    out[name + "_train_devices"] = len(
        jax.tree_util.tree_leaves(two.h)[0].sharding.device_set)
    if name != "lstm":  # value_and_grad on split inputs: the LSTM's (c, h)
        continue
    grad = jax.jit(jbptt.value_and_grad(model.cell, model.loss_fn))
    ref = grad(p, h0, xs, ys)
    split = grad(p, sharding.split_batch(h0, 2),
                 sharding.split_batch(xs, 2, axis=1),
                 sharding.split_batch(ys, 2, axis=1))
    errs[name + "_grad"] = rel(split, ref)
    h_T = jax.tree_util.tree_leaves(split[0][1])[0]
    out[name + "_grad_devices"] = len(h_T.sharding.device_set)
try:
    jbptt.train.train(model.cell, model.loss_fn, p, xs[:, :3], ys[:, :3], opt,
                      estimators.tbptt(6), mesh=2)
except ValueError as err:
    out["uneven"] = str(err)
try:
    sharding.split_batch(jnp.ones((5, 3, 2)), 2, axis=1)
except ValueError as err:
    out["uneven_split"] = str(err)
out["errs"] = errs
print(json.dumps(out))
"""


def test_data_parallel_gradients_and_training_equal_one_device():
    out = run_with_devices(DATA_PARALLEL, 2)
    assert out["devices"] == 2
    for name, err in out["errs"].items():
        assert err <= 1e-10, (name, err)
    assert out["lstm_grad_devices"] == 2  # the final state stays split
    for name in ("elman", "lstm", "gru"):
        assert out[name + "_train_devices"] == 2
        assert out[name + "_same_segments"]
    assert out["lstm_advanced"] > 0  # long segments were split into blocks
    assert "batch of 3 streams" in out["uneven"] and "2 devices" in out["uneven"]
    assert out["uneven_split"] == (
        "mesh: a batch axis of size 3 (axis 1 of a leaf of shape (5, 3, 2)) must "
        "divide evenly over the mesh's 2 devices."
    )


def test_split_batch_places_blocks_and_refuses_bad_axes():
    xs = sharding.split_batch({"x": jnp.ones((5, 4, 3)), "w": jnp.ones(5)}, 1, axis=1)
    assert xs["x"].shape == (5, 4, 3) and xs["w"].shape == (5,)
    with pytest.raises(ValueError, match="axis must be an int"):
        sharding.split_batch(jnp.ones(3), 1, axis=-1)
