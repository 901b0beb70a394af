"""Link weights for full BPTT, TBPTT and ARTBP (see DESIGN.md)."""

from jbptt._src.truncation import artbp as artbp
from jbptt._src.truncation import full as full
from jbptt._src.truncation import geometric as geometric
from jbptt._src.truncation import poly_tail as poly_tail
from jbptt._src.truncation import tbptt as tbptt
