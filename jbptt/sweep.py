"""Bias/variance sweeps of gradient estimators (one ``jit``, shared forward).

The problem a sweep estimates is :class:`jbptt.estimators.Problem`.
"""

from jbptt._src import protocol as _protocol
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.sweep import SweepResult as SweepResult
from jbptt._src.sweep import make_sweep as make_sweep
from jbptt._src.sweep import sample_estimates as sample_estimates
from jbptt._src.sweep import sample_stats as sample_stats
from jbptt._src.sweep import sweep as sweep
from jbptt._src.sweep import to_result as to_result

_deprecated = {
    "Problem": _Moved(_protocol.Problem, "jbptt.estimators.Problem"),
    "gradient_fn": _Moved(_protocol.gradient_fn, "jbptt.estimators.gradient_fn"),
}
__getattr__ = _forward(__name__, _deprecated)
