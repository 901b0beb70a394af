"""Training checkpoints: save and restore a pytree of training state.

:class:`Checkpointer` saves and restores any pytree of training state
(params, optimizer state, hidden state, PRNG key, step) with
``orbax.checkpoint``; arrays round-trip bit for bit, so a resumed run
matches an uninterrupted one exactly. orbax is an optional extra
(``pip install "jbptt[runs]"``), imported when a :class:`Checkpointer` is
made; without it that raises ``ImportError`` naming the extra.

**Sharing a folder.** More than one :class:`Checkpointer` may use a folder
(a restarted process while the old one still runs). Every change to the
folder (a save with its manifest, a prune, a quarantine) happens while
holding an exclusive ``fcntl.flock`` on ``<folder>/jbptt.lock``. Pruning
(``max_to_keep``) deletes only step folders that this object saved (each
manifest names its writer), never another writer's steps or steps of an
earlier run.

**What is trusted.** Each step's manifest holds the leaf paths, shapes and
dtypes, a SHA-256 of the bytes and the configuration hash. ``restore``
refuses a step of another configuration (naming the step, both hashes and
what changed). A step whose bytes fail their checksum, whose orbax files
are unreadable or whose manifest is damaged is moved aside (quarantined,
never deleted) to ``<folder>/jbptt-quarantine/step-<n>[.k]/`` with a
``reason.txt``, with a ``RuntimeWarning`` naming the file; a step whose save
was killed before its manifest was written is moved there quietly. So
:meth:`Checkpointer.latest_step` reports only complete steps and the same
step number can be saved again.

**Several processes.** In a ``jax.distributed`` job a :class:`Checkpointer`
belongs to the process that makes it (orbax waits for no other process):
let process 0 save, ``if jax.process_index() == 0: ckpt.save(...)``. It
stores host arrays, so gather a state split over processes first, on every
process (``jax.experimental.multihost_utils.process_allgather``). Without a
shared disk, :meth:`Checkpointer.restore_from_process_0` restores on
process 0 and sends the state to the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from typing import Any

import jax
import numpy as np

from jbptt._src import durable, processes, runs, validation

_INSTALL = 'pip install "jbptt[runs]"'


def orbax_checkpoint():
    """The ``orbax.checkpoint`` module, or ``ImportError`` naming the extra."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise ImportError(
            "jbptt.runs.Checkpointer saves with orbax-checkpoint, an optional "
            f"dependency: install it with `{_INSTALL}` (or "
            "`pip install orbax-checkpoint`)."
        ) from e
    return ocp


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _to_saveable(state):
    # Typed PRNG keys are stored as their raw key data (uint32 words); all as
    # NumPy arrays (orbax refuses a one-device jax.Array in a multi-process job).
    return jax.tree_util.tree_map(
        lambda a: np.asarray(jax.random.key_data(a) if _is_key(a) else a), state
    )


_MANIFESTS = "jbptt-manifests"
_QUARANTINE = "jbptt-quarantine"
_NO_MANIFEST = "has no manifest (its save was stopped before it finished)"


def _leaf_paths(tree) -> list[tuple[str, Any]]:
    return [
        (jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _describe_leaves(saveable) -> list[list]:
    return [
        [name, list(np.shape(a)), str(np.asarray(a).dtype)]
        for name, a in _leaf_paths(saveable)
    ]


def _digest(saveable) -> str:
    h = hashlib.sha256()
    for name, a in _leaf_paths(saveable):
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _compare(saved: list, expected: list, step: int) -> None:
    """Refuse a template that differs from the saved state, naming the leaf."""
    saved_names = [n for n, *_ in saved]
    expected_names = [n for n, *_ in expected]
    if saved_names != expected_names:
        pairs = zip(saved_names, expected_names, strict=False)
        i = next(
            (j for j, (a, b) in enumerate(pairs) if a != b),
            min(len(saved_names), len(expected_names)),
        )
        got = saved_names[i] if i < len(saved_names) else "<none>"
        want = expected_names[i] if i < len(expected_names) else "<none>"
        raise ValueError(
            f"template does not match checkpoint step {step}: different "
            f"structure at leaf {i}: saved {got}, template {want} "
            f"({len(saved_names)} saved leaves, {len(expected_names)} in the "
            "template)."
        )
    for (name, shape, dtype), (_, t_shape, t_dtype) in zip(
        saved, expected, strict=True
    ):
        if shape != t_shape or dtype != t_dtype:
            raise ValueError(
                f"template does not match checkpoint step {step} at leaf {name}: "
                f"saved {dtype}{shape}, template {t_dtype}{t_shape}. Restore "
                "into a template of the saved shapes and dtypes."
            )


def _from_saveable(template, raw):
    def back(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        if isinstance(t, bool | int | float) and not isinstance(t, np.generic):
            return type(t)(np.asarray(r).item())
        return jax.numpy.asarray(r)

    return jax.tree_util.tree_map(back, template, raw)


def _for_orbax(saveable):
    # orbax refuses zero-size arrays; they carry no data (their shape and
    # dtype are in the manifest), so a one-element stand-in is stored.
    return jax.tree_util.tree_map(
        lambda a: a if a.size else np.zeros((1,), a.dtype), saveable
    )


def _from_orbax(raw, saveable):
    return jax.tree_util.tree_map(
        lambda r, t: r if t.size else np.zeros(t.shape, t.dtype), raw, saveable
    )


def _check_step(step) -> int:
    if isinstance(step, bool | np.bool_):
        raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
    a = np.asarray(step)
    if a.ndim or not np.issubdtype(a.dtype, np.integer) or a < 0:
        raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
    return int(step)


def _read_config(path: str) -> dict | None:
    """The stored ``{"config_hash", "config"}``; ``None`` if there is none,
    ``ValueError`` naming the file if it is damaged."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        stored = json.loads(text)
        if not isinstance(stored, dict) or not isinstance(stored["config"], dict):
            raise ValueError("not an object with a 'config' object")
        if not isinstance(stored["config_hash"], str):
            raise ValueError("'config_hash' is not a string")
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(
            f"{path} is damaged (expected JSON with 'config_hash' and 'config': "
            f"{detail}); it is left as it is. Restore it, or use another "
            "checkpoint folder."
        ) from None
    return stored


class Checkpointer:
    """Save and restore training state with ``orbax.checkpoint``.

    ``state`` is any pytree of arrays: params, optimizer state, hidden state,
    a typed PRNG key (stored as its key data and re-wrapped on restore),
    Python or array scalars (the step). Saving is synchronous, so a
    checkpoint that :meth:`latest_step` reports is complete on disk; orbax
    writes each step to a temporary folder and renames it when done, and
    jbptt then writes the step's manifest (leaf shapes, dtypes, a SHA-256 of
    the bytes, the configuration hash and this object's writer id) by
    temp-file-and-rename, all under the folder's lock. :meth:`restore`
    refuses a template that differs from what was saved, and a step of
    another configuration; it quarantines (moves aside, with a warning) a
    step whose bytes no longer match their checksum or whose manifest is
    damaged.

    Args:
      directory: folder of the checkpoints (created if missing).
      config: optional JSON-able configuration; stored beside the
        checkpoints, and reopening with another configuration raises
        ``ValueError`` (resuming a different run would be silently wrong).
        Without it, the stored one (if any) is the one steps must match.
      max_to_keep: how many of the steps this object saved to keep; older
        ones it saved are deleted. Steps saved by another object (another
        process, an earlier run) are never deleted.

    Examples:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from jbptt import runs
      >>> ckpt = runs.Checkpointer(tempfile.mkdtemp())
      >>> state = {"params": jnp.arange(3.0), "key": jax.random.key(0), "step": 4}
      >>> ckpt.save(4, state)
      >>> ckpt.latest_step()
      4
      >>> back = ckpt.restore(state)
      >>> bool((back["params"] == state["params"]).all()), back["step"]
      (True, 4)
      >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        config: dict | None = None,
        max_to_keep: int = 2,
    ):
        self._max_to_keep = validation.integer(
            "max_to_keep", max_to_keep, minimum=1, what="an int ≥ 1"
        )
        self._ocp = ocp = orbax_checkpoint()
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        self._lock = os.path.join(self.directory, "jbptt")
        self._writer = uuid.uuid4().hex
        self._written: list[int] = []
        self._config, self._config_hash = self._check_config(config)
        # Pruning is done here, not by orbax: orbax's max_to_keep would
        # delete every old step in the folder, including other writers'.
        # In a jax.distributed job orbax would wait at barriers for every
        # process; this object's process alone saves and restores.
        index, count = processes.group()
        alone = {}
        if count > 1:
            alone["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=index, active_processes={index}
            )
            alone["create"] = False  # the folder was made above
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None, enable_async_checkpointing=False, **alone
            ),
        )

    def _check_config(self, config: dict | None):
        """``(config, hash)`` the steps must match; stores ``config`` if new."""
        path = os.path.join(self.directory, "config.json")
        stored = _read_config(path)
        if config is None:
            return (stored["config"], stored["config_hash"]) if stored else (None, None)
        digest, canon = runs.config_hash(config), runs.canonical(config)
        if stored is None:
            data = json.dumps({"config_hash": digest, "config": canon}).encode()
            with durable.locked(self._lock):
                if not durable.create_exclusively(path, data):
                    stored = _read_config(path)  # written meanwhile
        if stored is not None and stored["config_hash"] != digest:
            changed = runs.config_diff(stored["config"], canon)
            raise ValueError(
                f"{self.directory} holds checkpoints of a different "
                f"configuration; changed: {changed}. Use another checkpoint "
                "folder."
            )
        return canon, digest

    # Each saved step gets a manifest (leaf paths, shapes, dtypes and a
    # SHA-256 of every leaf's bytes) written atomically after orbax has
    # finished the step: a step without an intact manifest is incomplete.
    def _manifest_path(self, step: int) -> str:
        return os.path.join(self.directory, _MANIFESTS, f"{int(step)}.json")

    def _manifest(self, step: int) -> tuple[dict | None, str | None]:
        """``(manifest, None)``; ``(None, None)`` when there is none (a save
        stopped before it); ``(None, why)`` when it is damaged."""
        path = self._manifest_path(step)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return None, None
        try:
            m = json.loads(text)
            if not isinstance(m, dict) or m.get("step") != int(step):
                raise ValueError(f"not the manifest of step {step}")
            if not isinstance(m.get("leaves"), list) or "sha256" not in m:
                raise ValueError("its 'leaves' or 'sha256' is missing")
        except (ValueError, UnicodeDecodeError) as e:
            return None, (
                f"checkpoint step {step} in {self.directory}: its manifest "
                f"{path} is damaged ({e})"
            )
        return m, None

    def _disk_steps(self) -> list[int]:
        self._manager.reload()  # see steps written by another process
        return sorted(int(s) for s in self._manager.all_steps())

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint and an intact manifest, oldest first."""
        return [s for s in self._disk_steps() if self._manifest(s)[0] is not None]

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``.

        Read from disk each time, so it is the same in this process and in
        one that reopens the folder (e.g. after a kill).
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state) -> None:
        """Write ``state`` as checkpoint ``step`` (blocking until on disk).

        A step already on disk without an intact manifest (a save stopped
        before it finished, a damaged manifest) is quarantined first; an
        intact one is refused.

        Raises:
          ValueError: ``step`` is not an int ≥ 0, or the folder already holds
            an intact checkpoint of that step.
        """
        step = _check_step(step)
        saveable = _to_saveable(state)
        manifest = {
            "step": step,
            "leaves": _describe_leaves(saveable),
            "sha256": _digest(saveable),
            "config_hash": self._config_hash,
            "config": self._config,
            "writer": self._writer,
        }
        with durable.locked(self._lock):
            if step in self._disk_steps():
                self._clear_for_save(step)
            self._manager.save(
                step, args=self._ocp.args.StandardSave(_for_orbax(saveable)), force=True
            )
            self._manager.wait_until_finished()
            os.makedirs(os.path.join(self.directory, _MANIFESTS), exist_ok=True)
            runs.replace_atomically(
                self._manifest_path(step), json.dumps(manifest).encode() + b"\n"
            )
            self._written = [s for s in self._written if s != step] + [step]
            self._prune()

    def _clear_for_save(self, step: int) -> None:
        manifest, problem = self._manifest(step)
        if manifest is not None:
            raise ValueError(
                f"checkpoint step {step} already exists in {self.directory}; "
                "saving it again would replace it. Save under another step, or "
                "restore it."
            )
        moved = self._quarantine_unlocked(step, problem)
        if problem is not None:
            warnings.warn(f"{problem}; moved to {moved}.", RuntimeWarning, stacklevel=3)

    def _prune(self) -> None:
        """Delete the oldest steps this object saved beyond ``max_to_keep``;
        a step since replaced by another writer is left alone."""
        ours = sorted(self._written)
        for step in ours[: max(0, len(ours) - self._max_to_keep)]:
            self._written.remove(step)
            manifest, _ = self._manifest(step)
            if manifest is None or manifest.get("writer") != self._writer:
                continue
            if step in self._disk_steps():
                self._manager.delete(step)
            os.remove(self._manifest_path(step))

    def _quarantine_unlocked(self, step: int, problem: str | None) -> str | None:
        """Move step ``step`` (folder and manifest) to the quarantine folder,
        with ``reason.txt``; the new place, or ``None`` if it is gone."""
        folder = os.path.join(self.directory, str(step))
        if not os.path.isdir(folder):
            return None
        if problem is None and self._manifest(step)[0] is not None:
            return None  # its manifest was written meanwhile: complete
        reason = problem or f"checkpoint step {step} in {self.directory} {_NO_MANIFEST}"
        place = durable.free_name(
            os.path.join(self.directory, _QUARANTINE, f"step-{step}")
        )
        os.makedirs(place)
        durable.create_exclusively(os.path.join(place, "reason.txt"), reason.encode())
        durable.move_aside(folder, os.path.join(place, "checkpoint"))
        if os.path.lexists(self._manifest_path(step)):
            durable.move_aside(
                self._manifest_path(step), os.path.join(place, "manifest.json")
            )
        self._manager.reload()
        self._written = [s for s in self._written if s != step]
        return place

    def _quarantine(self, step: int, problem: str | None) -> str | None:
        with durable.locked(self._lock):
            return self._quarantine_unlocked(step, problem)

    def _quarantined(self, step: int) -> str:
        """Where earlier copies of ``step`` were moved and why, for messages."""
        folder = os.path.join(self.directory, _QUARANTINE)
        notes = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            if name == f"step-{step}" or name.startswith(f"step-{step}."):
                try:
                    with open(os.path.join(folder, name, "reason.txt")) as f:
                        why = f.read().strip()
                except OSError:
                    why = "reason unknown"
                notes.append(f"; step {step} was moved to {folder}/{name}: {why}")
        return "".join(notes)

    def _check_step_config(self, step: int, manifest: dict) -> None:
        saved = manifest.get("config_hash")
        if saved == self._config_hash:
            return
        changed = runs.config_diff(manifest.get("config") or {}, self._config or {})
        raise ValueError(
            f"checkpoint step {step} in {self.directory} was saved by a run of "
            f"another configuration (the step's hash {str(saved)[:10]}, this "
            f"run's {str(self._config_hash)[:10]}); changed: {changed}. It is "
            "not restored: move that step out of the folder, or restore with "
            "the configuration it was saved with."
        )

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest intact one).

        ``template`` is a state of the same structure (e.g. the freshly
        initialised one): it gives pytree types (optax NamedTuples), shapes,
        dtypes and which leaves are PRNG keys or Python scalars. It must
        match what was saved exactly: a different structure, shape or dtype
        is refused (``ValueError`` naming the first differing leaf) rather
        than reshaped or cast. A step saved under another configuration is
        refused the same way (naming the step, both hashes and what changed).

        Every step's bytes are checked against the SHA-256 stored when it was
        saved. A corrupted step (bad checksum, unreadable files or a damaged
        manifest) is quarantined (see the module docstring): with
        ``step=None`` with a ``RuntimeWarning`` naming it, and the newest
        intact step is restored; an explicit corrupted ``step`` raises
        ``ValueError``.

        Raises:
          FileNotFoundError: no (intact) checkpoint in the folder.
          ValueError: ``template`` does not match the saved state, the step
            is of another configuration, or the requested step is corrupted
            or missing.
        """
        saveable = _to_saveable(template)
        expected = _describe_leaves(saveable)
        if step is not None:
            step = int(validation.nonnegative_int("step", step))
            return _from_saveable(template, self._restore_one(step, saveable, expected))
        steps = self._disk_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        for s in reversed(steps):
            raw, problem = self._try_step(s, saveable, expected)
            if raw is not None:
                return _from_saveable(template, raw)
            if problem is None:
                continue  # a save stopped early: quarantined quietly
            moved = self._quarantine(s, problem)
            warnings.warn(
                f"{problem.rstrip('.')}. Moved to {moved}; falling back to an "
                "older checkpoint.",
                RuntimeWarning,
                stacklevel=2,
            )
        raise FileNotFoundError(
            f"no intact checkpoint in {self.directory}: every step ({steps}) "
            f"failed its checks and was moved to {_QUARANTINE}."
        )

    def _try_step(self, step, saveable, expected):
        """``(raw, None)``, or ``(None, problem)`` for a corrupted step, or
        ``(None, None)`` for a step without a manifest (quarantined here)."""
        manifest, problem = self._manifest(step)
        if manifest is None:
            if problem is None:
                self._quarantine(step, None)
            return None, problem
        self._check_step_config(step, manifest)
        _compare(manifest["leaves"], expected, step)
        return self._restore_checked(step, saveable, manifest)

    def _restore_one(self, step, saveable, expected):
        steps = self._disk_steps()
        manifest, problem = self._manifest(step)
        if step not in steps or (manifest is None and problem is None):
            raise ValueError(
                f"no complete checkpoint for step {step} in {self.directory}; "
                f"steps: {self.all_steps()}{self._quarantined(step)}."
            )
        if manifest is not None:
            self._check_step_config(step, manifest)
            _compare(manifest["leaves"], expected, step)
            raw, problem = self._restore_checked(step, saveable, manifest)
            if problem is None:
                return raw
        moved = self._quarantine(step, problem)
        raise ValueError(f"{problem.rstrip('.')}; moved to {moved}.")

    def _restore_checked(self, step, saveable, manifest):
        abstract = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _for_orbax(saveable)
        )
        try:
            raw = self._manager.restore(
                step, args=self._ocp.args.StandardRestore(abstract)
            )
            raw = _from_orbax(raw, saveable)
        except Exception as e:  # orbax's own error on unreadable bytes
            return None, (
                f"checkpoint step {step} in {self.directory} is unreadable "
                f"({type(e).__name__}: {str(e)[:200]})."
            )
        if _digest(raw) != manifest.get("sha256"):
            return None, (
                f"checkpoint step {step} in {self.directory} is corrupted: its "
                "bytes do not match the SHA-256 stored when it was saved."
            )
        return raw, None

    @staticmethod
    def restore_from_process_0(directory, template, *, config=None, step=None):
        """:meth:`Checkpointer.restore` on process 0, sent to every process of a
        ``jax.distributed`` job: no shared disk is needed. Every process calls
        it at the same point (a collective); only process 0 opens ``directory``
        (its own disk), the others never touch theirs and get process 0's state
        bit for bit, or the error it raised (``FileNotFoundError`` when it has
        no checkpoint, ``ValueError`` otherwise, naming process 0). Outside a
        job of several processes, :meth:`Checkpointer.restore` itself. Args as
        :class:`Checkpointer` and :meth:`Checkpointer.restore` (a ``template``
        split over processes: gathered first, as for saving)."""
        index, count = processes.group()
        if count == 1 or index == 0:
            try:
                with Checkpointer(directory, config=config) as ckpt:
                    state = ckpt.restore(template, step)
            except Exception as err:  # sent, so that no process waits for it
                if count > 1:
                    processes.broadcast(
                        {"error": type(err).__name__, "why": str(err)}, True
                    )
                raise
            if count == 1:
                return state
            processes.broadcast({"error": None}, True)
            return _from_saveable(
                template, processes.broadcast_arrays(_to_saveable(state), True)
            )
        got = processes.broadcast(None, False)
        if got["error"]:
            kind = (
                FileNotFoundError if got["error"] == "FileNotFoundError" else ValueError
            )
            raise kind(f"process 0 could not restore: {got['why']}")
        return _from_saveable(
            template, processes.broadcast_arrays(_to_saveable(template), False)
        )

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
