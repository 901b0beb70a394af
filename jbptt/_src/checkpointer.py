"""Training checkpoints: save and restore a pytree of training state.

:class:`Checkpointer` saves and restores any pytree of training state
(params, optimizer state, hidden state, PRNG key, step) with
``orbax.checkpoint``; arrays round-trip bit for bit, so a resumed run
matches an uninterrupted one exactly. orbax is an optional extra
(``pip install "jbptt[runs]"``), imported when a :class:`Checkpointer` is
made; without it that raises ``ImportError`` naming the extra.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any

import jax
import numpy as np

from jbptt._src import runs, validation

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
    # Typed PRNG keys are stored as their raw key data (uint32 words).
    return jax.tree_util.tree_map(
        lambda a: jax.random.key_data(a) if _is_key(a) else np.asarray(a), state
    )


_MANIFESTS = "jbptt-manifests"


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


class Checkpointer:
    """Save and restore training state with ``orbax.checkpoint``.

    ``state`` is any pytree of arrays: params, optimizer state, hidden state,
    a typed PRNG key (stored as its key data and re-wrapped on restore),
    Python or array scalars (the step). Saving is synchronous, so a
    checkpoint that :meth:`latest_step` reports is complete on disk; orbax
    writes each step to a temporary folder and renames it when done, and
    jbptt then writes the step's manifest (leaf shapes, dtypes and a
    SHA-256 of the bytes) by temp-file-and-rename. :meth:`restore` refuses a
    template that differs from what was saved and skips, with a warning, a
    step whose bytes no longer match their checksum.

    Args:
      directory: folder of the checkpoints (created if missing).
      config: optional JSON-able configuration; stored beside the
        checkpoints, and reopening with another configuration raises
        ``ValueError`` (resuming a different run would be silently wrong).
      max_to_keep: how many recent checkpoints to keep.

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
        validation.integer("max_to_keep", max_to_keep, minimum=1, what="an int ≥ 1")
        self._ocp = ocp = orbax_checkpoint()
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        if config is not None:
            self._check_config(config)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False
            ),
        )

    def _check_config(self, config: dict) -> None:
        path = os.path.join(self.directory, "config.json")
        digest = runs.config_hash(config)
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored["config_hash"] != digest:
                changed = runs.config_diff(stored["config"], runs.canonical(config))
                raise ValueError(
                    f"{self.directory} holds checkpoints of a different "
                    f"configuration; changed: {changed}. Use another checkpoint "
                    "folder."
                )
            return
        tmp = path + f".tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"config_hash": digest, "config": runs.canonical(config)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # Each saved step gets a manifest (leaf paths, shapes, dtypes and a
    # SHA-256 of every leaf's bytes) written atomically after orbax has
    # finished the step: a step without an intact manifest is incomplete.
    def _manifest_path(self, step: int) -> str:
        return os.path.join(self.directory, _MANIFESTS, f"{int(step)}.json")

    def _manifest(self, step: int) -> dict | None:
        try:
            with open(self._manifest_path(step), encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) and m.get("step") == int(step) else None

    def all_steps(self) -> list[int]:
        """Steps with a complete checkpoint and manifest, oldest first."""
        self._manager.reload()  # see steps written by another process
        return sorted(
            int(s) for s in self._manager.all_steps() if self._manifest(s) is not None
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``.

        Read from disk each time, so it is the same in this process and in
        one that reopens the folder (e.g. after a kill).
        """
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state) -> None:
        """Write ``state`` as checkpoint ``step`` (blocking until on disk)."""
        if isinstance(step, bool | np.bool_):
            raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
        a = np.asarray(step)
        if a.ndim or not np.issubdtype(a.dtype, np.integer) or a < 0:
            raise ValueError(f"step must be an int ≥ 0, got {step!r}.")
        step = int(step)
        saveable = _to_saveable(state)
        self._manager.save(
            step, args=self._ocp.args.StandardSave(_for_orbax(saveable)), force=True
        )
        self._manager.wait_until_finished()
        os.makedirs(os.path.join(self.directory, _MANIFESTS), exist_ok=True)
        manifest = {"step": step, "leaves": _describe_leaves(saveable)}
        manifest["sha256"] = _digest(saveable)
        runs.replace_atomically(
            self._manifest_path(step), json.dumps(manifest).encode() + b"\n"
        )
        kept = {int(s) for s in self._manager.all_steps()}
        for name in os.listdir(os.path.join(self.directory, _MANIFESTS)):
            stem = name.removesuffix(".json")
            if stem.isdigit() and int(stem) not in kept:  # pruned by max_to_keep
                os.remove(os.path.join(self.directory, _MANIFESTS, name))

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest intact one).

        ``template`` is a state of the same structure (e.g. the freshly
        initialised one): it gives pytree types (optax NamedTuples), shapes,
        dtypes and which leaves are PRNG keys or Python scalars. It must
        match what was saved exactly: a different structure, shape or dtype
        is refused (``ValueError`` naming the first differing leaf) rather
        than reshaped or cast.

        Every step's bytes are checked against the SHA-256 stored when it was
        saved. With ``step=None`` a corrupted step is skipped with a
        ``RuntimeWarning`` and the newest intact one is restored; an explicit
        corrupted ``step`` raises ``ValueError``.

        Raises:
          FileNotFoundError: no (intact) checkpoint in the folder.
          ValueError: ``template`` does not match the saved state, or the
            requested step is corrupted or missing.
        """
        saveable = _to_saveable(template)
        expected = _describe_leaves(saveable)
        if step is not None:
            step = int(validation.nonnegative_int("step", step))
            manifest = self._manifest(step)
            if manifest is None or step not in self._manager.all_steps():
                raise ValueError(
                    f"no complete checkpoint for step {step} in {self.directory}; "
                    f"steps: {self.all_steps()}."
                )
            _compare(manifest["leaves"], expected, step)
            raw, err = self._restore_checked(step, saveable, manifest)
            if err:
                raise ValueError(err)
            return _from_saveable(template, raw)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        for s in reversed(steps):
            manifest = self._manifest(s)
            _compare(manifest["leaves"], expected, s)
            raw, err = self._restore_checked(s, saveable, manifest)
            if not err:
                return _from_saveable(template, raw)
            warnings.warn(
                f"{err} Falling back to an older checkpoint.",
                RuntimeWarning,
                stacklevel=2,
            )
        raise FileNotFoundError(
            f"no intact checkpoint in {self.directory}: every step ({steps}) "
            "failed its checksum."
        )

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

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
