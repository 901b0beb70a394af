"""The same seed gives bitwise-identical sweep results, run to run and
process to process (same machine, same device count).

(The bias-sweep CLI is covered too: tests/test_runs.py compares a run that
was killed and resumed, across three processes, with an uninterrupted one,
bit for bit.)
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The sweep engine on a tiny problem: random ARTBP cuts (a poly-tail
# schedule drawn with lax.scan), TBPTT, statistics. Every random draw comes
# from the seed, so the bytes of the result are a function of the seed.
SWEEP = """
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jbptt
from jbptt import estimators, sweep, truncation

ES = [estimators.tbptt(3), estimators.artbp(truncation.poly_tail(3.0)),
      estimators.artbp(0.2)]
MODEL = jbptt.readout(jbptt.cells.elman(), output_size=1)
RUN = sweep.make_sweep(MODEL.cell, MODEL.loss_fn, ES, 24, chunk=8)

def run_sweep(seed):
    k_init, k_data, k_sweep = jax.random.split(jax.random.key(seed), 3)
    p = MODEL.init(k_init, 2, 5)
    xs = jax.random.normal(k_data, (12, 2, 2))
    h0 = MODEL.cell.initial_state(p, (2,))
    g, stats = RUN(p, h0, xs, xs[..., :1], k_sweep)
    return "".join(np.asarray(a).tobytes().hex()
                   for a in [g] + [stats[f] for f in sorted(stats)])
"""


def test_same_seed_same_bits_run_to_run_and_across_processes():
    ns: dict = {}
    exec(SWEEP, ns)
    a, b, c = ns["run_sweep"](3), ns["run_sweep"](3), ns["run_sweep"](4)
    assert a == b and len(a) > 1000
    assert a != c  # the seed matters
    # A fresh process with the same XLA settings compiles the same program
    # afresh: the same bits.
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP + "\nprint(run_sweep(3))\n"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == a
