"""Spread work over devices: a 1-D mesh, a chunked sharded row map for
sweeps, and batch splitting for data-parallel gradients and training."""

from jbptt._src.sharding import make_mesh as make_mesh
from jbptt._src.sharding import map_rows as map_rows
from jbptt._src.sharding import replicate as replicate
from jbptt._src.sharding import split_batch as split_batch
