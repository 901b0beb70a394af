"""Resumable runs: append-only result files with a configuration hash.

**Result files** (:class:`ResultFile`) are JSON lines. The first line is a
header that identifies the file (``"format": "jbptt-results-v1"``) and holds
the run's configuration and its hash (SHA-256 of the canonical JSON); every
other line is one finished row. A file at the path without that header (a
CSV, someone else's JSON lines) is refused and left untouched. A row is
written with a single ``write`` on a file opened for appending, then
flushed and ``fsync``-ed, so a run killed at any moment leaves every earlier
row intact and at most one torn last line. On reopening, torn or corrupt
lines, wherever they are, are moved to ``<path>.corrupt`` (with their line
numbers, bytes kept) and the intact rows stay; the file itself is only ever
rewritten by writing a temporary file, ``fsync`` and rename. Reopening with
the same configuration resumes: rows already there are skipped by key. A
different configuration is refused with a message saying what changed, or,
if asked, written to a sibling file named after the new hash.

The configuration hash and the atomic file helpers here are shared with
training checkpoints (``checkpointer.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

MISMATCH = ("raise", "new", "overwrite")
_FORMAT = "jbptt-results-v1"


# ------------------------------------------------------------ config hash ---


def _jsonable(obj):
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(
        f"config values must be JSON-serialisable (numbers, strings, lists, "
        f"dicts, arrays); got {type(obj).__name__}: {obj!r}."
    )


def canonical(config: dict) -> dict:
    """``config`` as plain JSON values (tuples to lists, arrays to lists)."""
    return json.loads(json.dumps(config, sort_keys=True, default=_jsonable))


def config_hash(config: dict) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``.

    Key order, tuples versus lists and numpy versus Python scalars do not
    change the hash; any value does.

    Examples:
      >>> from jbptt import runs
      >>> runs.config_hash({"T": 16, "ks": (1, 2)}) == runs.config_hash(
      ...     {"ks": [1, 2], "T": 16})
      True
      >>> runs.config_hash({"T": 16}) == runs.config_hash({"T": 17})
      False
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_diff(old: dict, new: dict) -> str:
    """The keys whose values differ, as ``"k: old -> new; ..."`` for messages.

    Examples:
      >>> config_diff({"lr": 0.1, "T": 8}, {"lr": 0.2, "T": 8})
      'lr: 0.1 -> 0.2'
    """
    keys = sorted(set(old) | set(new))
    parts = [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
    ]
    return "; ".join(parts) or "(values differ only in representation)"


# ----------------------------------------------------------- result file ---


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _append_bytes(path: str, data: bytes) -> None:
    """One ``write`` (completed if short) on a file opened for appending, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        while written < len(data):  # short writes are rare but legal
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, default=_jsonable, allow_nan=True) + "\n").encode()


def _append_line(path: str, obj: dict) -> None:
    """One ``write`` of one JSON line, then flush to disk."""
    _append_bytes(path, _line(obj))


def replace_atomically(path: str, data: bytes) -> None:
    """Make ``path`` hold ``data``: write a temp file beside it, fsync, rename,
    fsync the folder. A kill at any moment leaves the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path)


class _Parsed(NamedTuple):
    lines: list[dict]  # header first, then rows
    kept: bytes  # the intact lines, byte for byte
    corrupt: list[tuple[int, bytes]]  # (1-based line number, raw bytes)


def _parse(path: str) -> _Parsed | None:
    """Split a result file into intact lines and corrupt ones.

    A line is intact if it ends with a newline and holds a JSON object. The
    first line must be a jbptt header, else the file is not ours: ``ValueError``
    naming the path (nothing is changed). ``None`` for an empty file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        return None
    raw = _split_lines(data)
    header = _json_object(raw[0])
    if header is None or header.get("format") != _FORMAT:
        raise ValueError(
            f"{path} is not a jbptt results file (its first line is not a "
            f"'{_FORMAT}' header); it is left untouched. Choose another path."
        )
    lines, kept, corrupt = [header], [raw[0]], []
    for number, line in enumerate(raw[1:], start=2):
        obj = _json_object(line)
        if obj is None:
            corrupt.append((number, line))
        else:
            lines.append(obj)
            kept.append(line)
    return _Parsed(lines, b"".join(kept), corrupt)


def _split_lines(data: bytes) -> list[bytes]:
    """Lines ending in ``\\n`` (kept), and a last one without it if any.

    Only ``\\n`` ends a line: JSON escapes every control character, so a
    ``\\r`` (which ``bytes.splitlines`` would split on) is part of damage.
    """
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def _json_object(line: bytes) -> dict | None:
    if not line.endswith(b"\n"):
        return None  # a torn last write
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _quarantine(path: str, corrupt: list[tuple[int, bytes]]) -> str:
    """Append the corrupt lines to ``<path>.corrupt`` (with their line numbers,
    bytes kept exactly via surrogate escapes) before they leave ``path``."""
    side = path + ".corrupt"
    data = b"".join(
        _line(
            {
                "line": number,
                "text": raw.decode("utf-8", "surrogateescape"),
                "torn": not raw.endswith(b"\n"),
            }
        )
        for number, raw in corrupt
    )
    _append_bytes(side, data)
    _fsync_dir(side)
    return side


def _read_lines(path: str) -> list[dict]:
    """Header and intact rows (corrupt lines skipped), without changing the file."""
    parsed = _parse(path)
    return [] if parsed is None else parsed.lines


class ResultFile:
    """An append-only JSON-lines file of finished rows, resumable by key.

    Args:
      path: the ``.jsonl`` file (created with its folder if missing).
      config: the run's configuration (JSON-able dict); its hash is stored
        in the header line and checked when the file exists.
      key: the fields of a row that identify it (e.g. ``("cell",
        "train_step", "estimator")``), or a function ``row -> hashable``.
      on_mismatch: what to do if the file exists with another configuration:
        ``"raise"`` (default, a ``ValueError`` naming what changed),
        ``"new"`` (use the sibling file ``<stem>-<hash[:10]>.jsonl``, itself
        resumable) or ``"overwrite"`` (start afresh; the old file is kept
        as ``<path>.replaced-<old hash[:10]>``).

    Attributes:
      path: the file actually used (differs from ``path`` under ``"new"``).
      config_hash: the configuration's hash.
      resumed: how many rows were already there when the file was opened.

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
      >>> f = runs.ResultFile(path, {"T": 8}, key=("k",))
      >>> f.append({"k": 1, "bias": 0.5}), f.append({"k": 1, "bias": 0.5})
      (True, False)
      >>> g = runs.ResultFile(path, {"T": 8}, key=("k",))  # after a restart
      >>> g.resumed, g.done({"k": 1}), g.done({"k": 2})
      (1, True, False)
      >>> runs.ResultFile(path, {"T": 9}, key=("k",))
      Traceback (most recent call last):
      ...
      ValueError: ...
    """

    def __init__(
        self,
        path: str | os.PathLike,
        config: dict,
        key: Sequence[str] | Callable[[dict], Any],
        *,
        on_mismatch: str = "raise",
    ):
        if on_mismatch not in MISMATCH:
            raise ValueError(
                f"Unknown on_mismatch {on_mismatch!r}. It needs to be one of "
                f"{list(MISMATCH)}."
            )
        if callable(key):
            self._key = key
        elif isinstance(key, str) or not all(isinstance(k, str) for k in key):
            raise TypeError(
                "key must be a sequence of field names (e.g. ('cell', 'k')) or a "
                f"function row -> hashable, got {key!r}."
            )
        else:
            fields = tuple(key)
            self._key = lambda row: tuple(_hashable(row[k]) for k in fields)
        self.config = canonical(config)
        self.config_hash = config_hash(config)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        header = {
            "format": _FORMAT,
            "config_hash": self.config_hash,
            "config": self.config,
        }
        lines = self._open(path)
        if lines and lines[0].get("config_hash") != self.config_hash:
            changed = config_diff(lines[0].get("config", {}), self.config)
            if on_mismatch == "raise":
                raise ValueError(
                    f"{path} holds results of a different configuration (hash "
                    f"{str(lines[0].get('config_hash'))[:10]}, now "
                    f"{self.config_hash[:10]}); changed: {changed}. "
                    "Use another output folder, or on_mismatch='new' to write "
                    "beside it, or 'overwrite' to start afresh."
                )
            if on_mismatch == "new":
                stem, ext = os.path.splitext(path)
                path = f"{stem}-{self.config_hash[:10]}{ext or '.jsonl'}"
                lines = self._open(path)
            else:  # keep the old results beside it: nothing is deleted
                old_hash = str(lines[0].get("config_hash"))[:10]
                os.replace(path, f"{path}.replaced-{old_hash}")
                _fsync_dir(path)
                lines = []
        self.path = path
        if not lines:
            replace_atomically(path, _line(header))
            lines = [header]
        self._rows = lines[1:]
        self._done = {self._key(r) for r in self._rows}
        self.resumed = len(self._rows)

    @staticmethod
    def _open(path: str) -> list[dict]:
        """Intact lines of ``path``; corrupt ones are moved to the side file."""
        if not os.path.exists(path):
            return []
        if not os.path.isfile(path):
            raise ValueError(f"{path} exists and is not a file; choose another path.")
        parsed = _parse(path)
        if parsed is None:
            return []
        if parsed.corrupt:
            side = _quarantine(path, parsed.corrupt)
            replace_atomically(path, parsed.kept)
            numbers = [n for n, _ in parsed.corrupt]
            # A torn last line is what a kill mid-write leaves: expected, so
            # quarantined quietly. Anything else is damage worth a warning.
            torn_last = len(numbers) == 1 and not parsed.corrupt[0][1].endswith(b"\n")
            if not torn_last:
                warnings.warn(
                    f"{path}: {len(numbers)} corrupt line(s) (line "
                    f"{', '.join(map(str, numbers))}) moved to {side}; every "
                    "intact row is kept.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return parsed.lines

    def done(self, row_or_key) -> bool:
        """Whether a row with this key (given a row dict, or a key) is stored."""
        key = self._key(row_or_key) if isinstance(row_or_key, dict) else row_or_key
        return key in self._done

    def append(self, row: dict) -> bool:
        """Write ``row`` durably unless its key is already stored.

        Returns whether it was written.
        """
        if not isinstance(row, dict):
            raise TypeError(f"row must be a dict, got {type(row).__name__}.")
        key = self._key(row)
        if key in self._done:
            return False
        _append_line(self.path, row)
        self._rows.append(canonical(row))
        self._done.add(key)
        return True

    def extend(self, rows: Iterable[dict]) -> int:
        """Append several rows; returns how many were new."""
        return sum(self.append(r) for r in rows)

    def rows(self) -> list[dict]:
        """All stored rows, in the order they were written."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_rows(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a result file (corrupt or torn lines are skipped;
    the file is not changed).

    Examples:
      >>> import os, tempfile
      >>> from jbptt import runs
      >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
      >>> runs.ResultFile(path, {"seed": 0}, key=("i",)).append({"i": 0, "x": 1.5})
      True
      >>> runs.read_rows(path)
      ({'seed': 0}, [{'i': 0, 'x': 1.5}])
    """
    lines = _read_lines(os.fspath(path))
    if not lines:
        raise ValueError(f"{path} is not a jbptt results file (it is empty).")
    return lines[0]["config"], lines[1:]
