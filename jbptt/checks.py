"""Value checks: finite data up front, divergence detection in training."""

from jbptt._src import checks as _checks
from jbptt._src.checks import Divergence as Divergence
from jbptt._src.checks import DivergenceError as DivergenceError
from jbptt._src.checks import check_finite as check_finite
from jbptt._src.checks import check_tokens as check_tokens
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward

_LOOP = "train(on_nonfinite=...) (a training-loop internal, not public)"
_deprecated = {
    name: _Moved(getattr(_checks, name), _LOOP)
    for name in (
        "POLICIES",
        "all_finite",
        "check_policy",
        "finite_flags",
        "handle_nonfinite",
        "nonfinite_names",
        "select_if",
    )
}
__getattr__ = _forward(__name__, _deprecated)
