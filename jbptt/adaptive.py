"""Adaptive truncation (Aicher, Foti & Fox 2019): fit the decay of per-lag
gradient norms, bound the relative bias of TBPTT(k), pick the smallest k
under a tolerance δ, and re-pick it during training."""

from jbptt._src.adaptive import AdaptiveTBPTT as AdaptiveTBPTT
from jbptt._src.adaptive import Decay as Decay
from jbptt._src.adaptive import ParamLags as ParamLags
from jbptt._src.adaptive import adaptive as adaptive
from jbptt._src.adaptive import bias_bound as bias_bound
from jbptt._src.adaptive import choose_k as choose_k
from jbptt._src.adaptive import choose_tbptt_k as choose_tbptt_k
from jbptt._src.adaptive import fit_decay as fit_decay
from jbptt._src.adaptive import param_lag_norms as param_lag_norms
from jbptt._src.adaptive import tbptt_bias_bounds as tbptt_bias_bounds
from jbptt._src.adaptive import train_adaptive as train_adaptive
