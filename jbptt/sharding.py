"""Spread sweeps over devices: a 1-D mesh and a chunked, sharded row map."""

from jbptt._src.sharding import make_mesh as make_mesh
from jbptt._src.sharding import map_rows as map_rows
