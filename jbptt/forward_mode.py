"""Forward-mode online gradient estimators: RTRL, UORO and SnAp-1."""

from jbptt._src.forward_mode import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from jbptt._src.forward_mode import Footprint as Footprint
from jbptt._src.forward_mode import OnlineEstimator as OnlineEstimator
from jbptt._src.forward_mode import OnlineState as OnlineState
from jbptt._src.forward_mode import rtrl as rtrl
from jbptt._src.forward_mode import sample_estimates as sample_estimates
from jbptt._src.forward_mode import snap1 as snap1
from jbptt._src.forward_mode import uoro as uoro
from jbptt._src.forward_mode_train import OnlineHistory as OnlineHistory
from jbptt._src.forward_mode_train import train as train
from jbptt._src.sparsity import sparsity_pattern as sparsity_pattern

Cost = Footprint  # the name before the estimator protocol's Cost; kept one release
