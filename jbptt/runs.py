"""Resumable runs: append-only result files (JSON lines, config hash) and
training checkpoints (orbax, an optional extra: ``pip install "jbptt[runs]"``)."""

from jbptt._src.checkpointer import Checkpointer as Checkpointer
from jbptt._src.provenance import run_metadata as run_metadata
from jbptt._src.runs import MISMATCH as MISMATCH
from jbptt._src.runs import ResultFile as ResultFile
from jbptt._src.runs import canonical as canonical
from jbptt._src.runs import config_hash as config_hash
from jbptt._src.runs import read_rows as read_rows
