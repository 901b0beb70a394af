"""Resumable runs: append-only result files (JSON lines, config hash) and
training checkpoints (orbax, an optional extra: ``pip install "jbptt[runs]"``)."""

from jbptt._src import runs as _runs
from jbptt._src.checkpointer import Checkpointer as Checkpointer
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward
from jbptt._src.provenance import run_metadata as run_metadata
from jbptt._src.runs import ResultFile as ResultFile
from jbptt._src.runs import config_hash as config_hash
from jbptt._src.runs import read_rows as read_rows

_deprecated = {
    "MISMATCH": _Moved(
        _runs.MISMATCH, 'the strings ("raise", "new", "overwrite") of on_mismatch='
    ),
    "canonical": _Moved(_runs.canonical, "config_hash(config) (canonical JSON inside)"),
}
__getattr__ = _forward(__name__, _deprecated)
