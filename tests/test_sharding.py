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
    env.pop("XLA_FLAGS", None)
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
