"""Value checks: finite data up front, divergence detection in training."""

from jbptt._src.checks import POLICIES as POLICIES
from jbptt._src.checks import Divergence as Divergence
from jbptt._src.checks import DivergenceError as DivergenceError
from jbptt._src.checks import all_finite as all_finite
from jbptt._src.checks import check_finite as check_finite
from jbptt._src.checks import check_policy as check_policy
from jbptt._src.checks import finite_flags as finite_flags
from jbptt._src.checks import handle_nonfinite as handle_nonfinite
from jbptt._src.checks import nonfinite_names as nonfinite_names
from jbptt._src.checks import select_if as select_if
