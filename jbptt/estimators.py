"""Gradient estimators as data: full BPTT, TBPTT(k), Williams–Peng
TBPTT(k1, k2) and ARTBP as windows of link and loss weights."""

from jbptt._src.estimators import Estimator as Estimator
from jbptt._src.estimators import artbp as artbp
from jbptt._src.estimators import artbp_c_for_depth as artbp_c_for_depth
from jbptt._src.estimators import artbp_matched as artbp_matched
from jbptt._src.estimators import estimate as estimate
from jbptt._src.estimators import full as full
from jbptt._src.estimators import tbptt as tbptt
from jbptt._src.estimators import williams_peng as williams_peng
