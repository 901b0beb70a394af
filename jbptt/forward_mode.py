"""Forward-mode online gradient estimators: RTRL, UORO and SnAp-1, and
layer-wise RTRL for stacks of diagonal recurrences.

They implement the estimator protocol (:mod:`jbptt.estimators`): sample
them with :func:`jbptt.sweep.sample_estimates` or :func:`jbptt.sweep.sweep`
and train with :func:`jbptt.train.train`.
"""

from jbptt._src import forward_mode as _forward_mode
from jbptt._src import forward_mode_train as _forward_mode_train
from jbptt._src import influence as _influence
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.forward_mode import OnlineEstimator as OnlineEstimator
from jbptt._src.forward_mode import rtrl as rtrl
from jbptt._src.forward_mode import snap1 as snap1
from jbptt._src.forward_mode import uoro as uoro
from jbptt._src.layerwise_rtrl import layerwise_rtrl as layerwise_rtrl
from jbptt._src.sparsity import sparsity_pattern as sparsity_pattern

_TRAIN = "jbptt.train.train (or train.Trainer) with the estimator"
_deprecated = {
    "sample_estimates": _Moved(
        _forward_mode.online_samples,
        "jbptt.sweep.sample_estimates(estimators.Problem(...), estimator, key, n) "
        "(its draws fold the estimator's name into the key)",
    ),
    "train": _Moved(_forward_mode_train.train, _TRAIN),
    "OnlineHistory": _Moved(_forward_mode_train.OnlineHistory, _TRAIN),
    "Cost": _Moved(
        _influence.Footprint,
        "estimator.footprint(...) for memory and FLOPs (a Footprint), "
        "estimator.cost(problem) for jbptt.estimators.Cost",
    ),
    "Footprint": _Moved(
        _influence.Footprint, "the value estimator.footprint(...) returns"
    ),
    "OnlineState": _Moved(
        _forward_mode.OnlineState, "the value estimator.init(...) returns"
    ),
    "DEFAULT_MAX_BYTES": _Moved(
        _forward_mode.DEFAULT_MAX_BYTES, "the default of rtrl/uoro/snap1(max_bytes=)"
    ),
}
__getattr__ = _forward(__name__, _deprecated)
