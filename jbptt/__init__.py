"""jbptt: backpropagation through time in JAX.

Exact BPTT, truncated BPTT and unbiased randomized truncation (ARTBP) as one
reverse scan with link weights. See docs/design.md, "The one equation".
"""

from jbptt import adaptive as adaptive
from jbptt import cells as cells
from jbptt import checks as checks
from jbptt import data as data
from jbptt import diagnostics as diagnostics
from jbptt import estimators as estimators
from jbptt import forward_mode as forward_mode
from jbptt import plotting as plotting
from jbptt import runs as runs
from jbptt import sharding as sharding
from jbptt import sweep as sweep
from jbptt import train as train
from jbptt import truncation as truncation
from jbptt._src import checks as _checks
from jbptt._src.adjoint import Autodiff as Autodiff
from jbptt._src.adjoint import Budget as Budget
from jbptt._src.adjoint import DiagonalScan as DiagonalScan
from jbptt._src.adjoint import ReverseScan as ReverseScan
from jbptt._src.api import grads_for_weights as grads_for_weights
from jbptt._src.api import loss as loss
from jbptt._src.api import rnn_scan as rnn_scan
from jbptt._src.api import value_and_grad as value_and_grad
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.models import Model as Model
from jbptt._src.models import readout as readout
from jbptt._src.scan import Residuals as Residuals
from jbptt._src.scan import backward as backward
from jbptt._src.scan import forward as forward

_deprecated = {
    "check_finite": _Moved(_checks.check_finite, "jbptt.checks.check_finite"),
}
__getattr__ = _forward(__name__, _deprecated)


def _version() -> str:
    # The installed distribution's metadata is the one source of the version
    # (pyproject.toml); a source tree that was never installed has none.
    from importlib import metadata

    try:
        return metadata.version("jbptt")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
