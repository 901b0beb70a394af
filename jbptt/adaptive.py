"""Adaptive truncation (Aicher, Foti & Fox 2019): fit the decay of per-lag
gradient norms, bound the relative bias of TBPTT(k) and pick the smallest k
under a tolerance δ. The estimator that re-picks k as it trains is
:func:`jbptt.estimators.adaptive_tbptt`."""

from jbptt._src import adaptive as _adaptive
from jbptt._src.adaptive import bias_bound as bias_bound
from jbptt._src.adaptive import choose_k as choose_k
from jbptt._src.adaptive import choose_tbptt_k as choose_tbptt_k
from jbptt._src.adaptive import fit_decay as fit_decay
from jbptt._src.adaptive import param_lag_norms as param_lag_norms
from jbptt._src.adaptive import tbptt_bias_bounds as tbptt_bias_bounds
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward

_deprecated = {
    "adaptive": _Moved(_adaptive.adaptive_tbptt, "jbptt.estimators.adaptive_tbptt"),
    "train_adaptive": _Moved(
        _adaptive.train_adaptive,
        "jbptt.train.train (or train.Trainer) with estimators.adaptive_tbptt(...)",
    ),
    "AdaptiveTBPTT": _Moved(
        _adaptive.AdaptiveTBPTT, "jbptt.estimators.adaptive_tbptt(...) to build one"
    ),
    "Decay": _Moved(_adaptive.Decay, "the value fit_decay returns (no import needed)"),
    "ParamLags": _Moved(
        _adaptive.ParamLags, "the value param_lag_norms returns (no import needed)"
    ),
}
__getattr__ = _forward(__name__, _deprecated)
