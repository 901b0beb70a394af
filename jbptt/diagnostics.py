"""Diagnostics of vanishing and exploding gradients: per-lag gradient norms,
step-Jacobian spectra, Lyapunov exponents, memory length, and the link to
truncation bias (in closed form for linear diagonal recurrences)."""

from jbptt._src import diagnostics as _diagnostics
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.diagnostics import decay_rate as decay_rate
from jbptt._src.diagnostics import dropped_fraction as dropped_fraction
from jbptt._src.diagnostics import lyapunov_exponents as lyapunov_exponents
from jbptt._src.diagnostics import memory_length as memory_length
from jbptt._src.diagnostics import per_lag_norms as per_lag_norms
from jbptt._src.diagnostics import relative_bias as relative_bias
from jbptt._src.diagnostics import singular_values as singular_values
from jbptt._src.diagnostics import step_jacobians as step_jacobians
from jbptt._src.diagonal_bias import (
    diagonal_truncation_bias as diagonal_truncation_bias,
)
from jbptt._src.diagonal_bias import (
    geometric_truncation_bias as geometric_truncation_bias,
)

_deprecated = {
    "LagNorms": _Moved(
        _diagnostics.LagNorms, "the value per_lag_norms returns (no import needed)"
    ),
    "tbptt_ks": _Moved(
        _diagnostics.tbptt_ks, "jnp.stack([truncation.tbptt(T, k) for k in ks])"
    ),
}
__getattr__ = _forward(__name__, _deprecated)
