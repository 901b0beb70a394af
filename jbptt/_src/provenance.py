"""Run metadata: what produced a result file (versions, machine, commit, config).

Every experiment and benchmark stores the same record next to its numbers, so
a figure or a timing can be traced to the software and settings behind it.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata

_PACKAGES = ("jax", "jaxlib", "numpy", "optax", "flax")


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the checkout holding jbptt, or None outside a git tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    return commit if res.returncode == 0 and commit else None


def run_metadata(config: dict | None = None, seed=None) -> dict:
    """Versions, platform, device, commit, UTC time, config and seed of a run.

    Args:
      config: the run's settings (stored as given; must be JSON-serialisable
        for the caller's JSON file).
      seed: the PRNG seed, or None.

    Returns:
      A JSON-serialisable dict with keys ``versions`` (python, jax, jaxlib,
      numpy, optax, flax, jbptt), ``platform``, ``backend``, ``device_kind``,
      ``git_commit`` (None outside a git checkout), ``utc_time``, ``config``
      and ``seed``.

    Raises:
      TypeError: if ``config`` is not a dict or None.

    Example:
      >>> from jbptt.runs import run_metadata
      >>> m = run_metadata({"T": 16}, seed=0)
      >>> m["config"], m["seed"], "jax" in m["versions"]
      ({'T': 16}, 0, True)
    """
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or None, got {type(config).__name__}")
    import jax

    versions = {"python": platform.python_version()}
    versions.update({pkg: _version(pkg) for pkg in _PACKAGES})
    versions["jbptt"] = _version("jbptt") or "0+unknown"
    devices = jax.devices()
    return {
        "versions": versions,
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind if devices else None,
        "git_commit": _git_commit(),
        "utc_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": dict(config) if config is not None else None,
        "seed": seed,
    }
