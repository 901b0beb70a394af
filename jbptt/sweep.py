"""Bias/variance sweeps of gradient estimators (one ``jit``, shared forward)."""

from jbptt._src.sweep import Problem as Problem
from jbptt._src.sweep import SweepResult as SweepResult
from jbptt._src.sweep import gradient_fn as gradient_fn
from jbptt._src.sweep import make_sweep as make_sweep
from jbptt._src.sweep import sample_estimates as sample_estimates
from jbptt._src.sweep import sample_stats as sample_stats
from jbptt._src.sweep import sweep as sweep
from jbptt._src.sweep import to_result as to_result
