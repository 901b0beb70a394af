"""Gradient estimators and the protocol they share.

Truncation estimators as data (full BPTT, TBPTT(k), Williams–Peng
TBPTT(k1, k2) and ARTBP as windows of link and loss weights), zeroth-order
(ES, truncated ES, PES, NRES) and adaptive TBPTT, the gradient
:class:`Problem` they estimate, and the estimator protocol
(:class:`GradientEstimator`: ``samples``, ``cost``, ``online``) that they,
the forward-mode estimators (:mod:`jbptt.forward_mode`) and your own
implement.
"""

from jbptt._src import depth as _depth
from jbptt._src import estimators as _estimators
from jbptt._src import protocol as _protocol
from jbptt._src.adaptive import adaptive_tbptt as adaptive_tbptt
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.estimators import Estimator as Estimator
from jbptt._src.estimators import artbp as artbp
from jbptt._src.estimators import artbp_matched as artbp_matched
from jbptt._src.estimators import full as full
from jbptt._src.estimators import tbptt as tbptt
from jbptt._src.estimators import williams_peng as williams_peng
from jbptt._src.protocol import Cost as Cost
from jbptt._src.protocol import GradientEstimator as GradientEstimator
from jbptt._src.protocol import OnlineRule as OnlineRule
from jbptt._src.protocol import Problem as Problem
from jbptt._src.protocol import gradient_fn as gradient_fn
from jbptt._src.windows import estimate as estimate
from jbptt._src.zeroth_order import es as es
from jbptt._src.zeroth_order import nres as nres
from jbptt._src.zeroth_order import pes as pes
from jbptt._src.zeroth_order import truncated_es as truncated_es

_deprecated = {
    "artbp_c_for_depth": _Moved(
        _depth.artbp_c_for_depth,
        'estimators.artbp_matched(depth, T=T).hparams["c"]',
    ),
    "Links": _Moved(
        _estimators.Links, "the link weights w[T] themselves (wrapped for you)"
    ),
    "shared_forward": _Moved(
        _protocol.shared_forward,
        "sweep.sweep / sweep.make_sweep (which share the forward for you)",
    ),
}
__getattr__ = _forward(__name__, _deprecated)
