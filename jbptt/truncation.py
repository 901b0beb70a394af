"""Link weights for full BPTT, TBPTT and ARTBP, and the exact law of ARTBP's
cut patterns (see docs/design.md, "Estimators")."""

from jbptt._src.truncation import all_cut_patterns as all_cut_patterns
from jbptt._src.truncation import artbp as artbp
from jbptt._src.truncation import cut_probabilities as cut_probabilities
from jbptt._src.truncation import enumerate_artbp as enumerate_artbp
from jbptt._src.truncation import full as full
from jbptt._src.truncation import geometric as geometric
from jbptt._src.truncation import log_prob as log_prob
from jbptt._src.truncation import poly_tail as poly_tail
from jbptt._src.truncation import prob as prob
from jbptt._src.truncation import steps_since_cut as steps_since_cut
from jbptt._src.truncation import tbptt as tbptt
from jbptt._src.truncation import weights_from_cuts as weights_from_cuts
