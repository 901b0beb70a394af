"""Link weights for full BPTT, TBPTT and ARTBP, and the exact law of ARTBP's
cut patterns (see docs/design.md, "Estimators")."""

from jbptt._src import truncation as _truncation
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.truncation import artbp as artbp
from jbptt._src.truncation import enumerate_artbp as enumerate_artbp
from jbptt._src.truncation import full as full
from jbptt._src.truncation import geometric as geometric
from jbptt._src.truncation import log_prob as log_prob
from jbptt._src.truncation import poly_tail as poly_tail
from jbptt._src.truncation import tbptt as tbptt

_LAW = "enumerate_artbp(T, c) (every pattern's link weights and probability)"
_deprecated = {
    "prob": _Moved(_truncation.prob, "jnp.exp(truncation.log_prob(cuts, c))"),
    "all_cut_patterns": _Moved(_truncation.all_cut_patterns, _LAW),
    "weights_from_cuts": _Moved(_truncation.weights_from_cuts, _LAW),
    "cut_probabilities": _Moved(_truncation.cut_probabilities, _LAW),
    "steps_since_cut": _Moved(_truncation.steps_since_cut, _LAW),
}
__getattr__ = _forward(__name__, _deprecated)
