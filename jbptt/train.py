"""Online training along long sequences with any estimator and optax."""

import warnings as _warnings

from jbptt._src.buckets import Buckets as Buckets
from jbptt._src.protocol import segments as segments
from jbptt._src.train import Trainer as Trainer
from jbptt._src.train import every as every
from jbptt._src.train import link_weights as link_weights
from jbptt._src.train import progress_bar as progress_bar
from jbptt._src.train_compat import train as train
from jbptt._src.train_loop import Event as Event
from jbptt._src.train_loop import History as History
from jbptt._src.train_loop import TrainState as TrainState

_DEPRECATED = {
    "make_step": "build a jbptt.train.Trainer and call its run()",
    "bucket_length": "segments run in the buckets of jbptt.train.Buckets",
}


def __getattr__(name):
    if name in _DEPRECATED:
        _warnings.warn(
            f"jbptt.train.{name} is deprecated: {_DEPRECATED[name]}.",
            DeprecationWarning,
            stacklevel=2,
        )
        if name == "make_step":
            from jbptt._src.train_compat import make_step

            return make_step
        from jbptt._src.buckets import bucket_length

        return bucket_length
    raise AttributeError(f"module 'jbptt.train' has no attribute {name!r}")
