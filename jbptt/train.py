"""Online training along long sequences with TBPTT or ARTBP and optax."""

from jbptt._src.train import History as History
from jbptt._src.train import bucket_length as bucket_length
from jbptt._src.train import make_step as make_step
from jbptt._src.train import segments as segments
from jbptt._src.train import train as train
