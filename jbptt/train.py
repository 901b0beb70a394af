"""Online training along long sequences with any estimator and optax."""

from jbptt._src import buckets as _buckets
from jbptt._src import train_compat as _train_compat
from jbptt._src.buckets import Buckets as Buckets
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.protocol import segments as segments
from jbptt._src.train import Trainer as Trainer
from jbptt._src.train import every as every
from jbptt._src.train import link_weights as link_weights
from jbptt._src.train import progress_bar as progress_bar
from jbptt._src.train_compat import train as train
from jbptt._src.train_loop import Event as Event
from jbptt._src.train_loop import History as History
from jbptt._src.train_loop import TrainState as TrainState

_deprecated = {
    "make_step": _Moved(_train_compat.make_step, "a jbptt.train.Trainer and its run()"),
    "bucket_length": _Moved(
        _buckets.bucket_length, "the buckets of jbptt.train.Buckets"
    ),
}
__getattr__ = _forward(__name__, _deprecated)
