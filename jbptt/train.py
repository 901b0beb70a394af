"""Online training along long sequences with any estimator and optax."""

from jbptt._src.protocol import segments as segments
from jbptt._src.train import Event as Event
from jbptt._src.train import History as History
from jbptt._src.train import TrainState as TrainState
from jbptt._src.train import bucket_length as bucket_length
from jbptt._src.train import every as every
from jbptt._src.train import link_weights as link_weights
from jbptt._src.train import make_step as make_step
from jbptt._src.train import train as train
