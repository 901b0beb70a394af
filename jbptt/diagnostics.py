"""Diagnostics of vanishing and exploding gradients: per-lag gradient norms,
step-Jacobian spectra, Lyapunov exponents, memory length, and the link to
truncation bias."""

from jbptt._src.diagnostics import LagNorms as LagNorms
from jbptt._src.diagnostics import decay_rate as decay_rate
from jbptt._src.diagnostics import dropped_fraction as dropped_fraction
from jbptt._src.diagnostics import lyapunov_exponents as lyapunov_exponents
from jbptt._src.diagnostics import memory_length as memory_length
from jbptt._src.diagnostics import per_lag_norms as per_lag_norms
from jbptt._src.diagnostics import relative_bias as relative_bias
from jbptt._src.diagnostics import singular_values as singular_values
from jbptt._src.diagnostics import step_jacobians as step_jacobians
from jbptt._src.diagnostics import tbptt_ks as tbptt_ks
