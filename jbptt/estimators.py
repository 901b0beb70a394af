"""Gradient estimators and the protocol they share.

Truncation estimators as data (full BPTT, TBPTT(k), Williams–Peng
TBPTT(k1, k2) and ARTBP as windows of link and loss weights), and the
estimator protocol (:class:`GradientEstimator`: ``samples``, ``cost``,
``online``) that they, the forward-mode estimators and your own implement.
"""

from jbptt._src.adaptive import adaptive as adaptive_tbptt  # noqa: F401
from jbptt._src.estimators import Estimator as Estimator
from jbptt._src.estimators import artbp as artbp
from jbptt._src.estimators import artbp_c_for_depth as artbp_c_for_depth
from jbptt._src.estimators import artbp_matched as artbp_matched
from jbptt._src.estimators import estimate as estimate
from jbptt._src.estimators import full as full
from jbptt._src.estimators import tbptt as tbptt
from jbptt._src.estimators import williams_peng as williams_peng
from jbptt._src.protocol import Cost as Cost
from jbptt._src.protocol import GradientEstimator as GradientEstimator
from jbptt._src.protocol import Links as Links
from jbptt._src.protocol import OnlineRule as OnlineRule
from jbptt._src.protocol import Problem as Problem
from jbptt._src.protocol import gradient_fn as gradient_fn
from jbptt._src.protocol import shared_forward as shared_forward
from jbptt._src.zeroth_order import es as es
from jbptt._src.zeroth_order import nres as nres
from jbptt._src.zeroth_order import pes as pes
from jbptt._src.zeroth_order import truncated_es as truncated_es
