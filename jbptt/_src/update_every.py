"""A forward-mode estimator that updates every ``n`` steps instead of every
step: its online rule with segments of ``n`` steps (what
:meth:`jbptt.forward_mode.OnlineEstimator.every` returns)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class UpdateEvery(NamedTuple):
    """``estimator`` (an online estimator) with one update per ``n`` steps:
    the sum of its per-step gradients since the last update. The influence
    is carried across updates as before; a stream whose length is not a
    multiple of ``n`` ends with a shorter segment."""

    estimator: object
    n: int

    @property
    def name(self):
        return self.estimator.name

    @property
    def deterministic(self):
        return self.estimator.deterministic

    @property
    def hparams(self):
        return {**self.estimator.hparams, "update_every": self.n}

    def samples(self, problem, key, n, *, chunk=64, mesh=None):
        return self.estimator.samples(problem, key, n, chunk=chunk, mesh=mesh)

    def cost(self, problem):
        return self.estimator.cost(problem)

    def online(self):
        return self.estimator.online()._replace(plan=self._plan)

    def _plan(self, key, T: int):
        full, rest = divmod(T, self.n)
        return np.array([self.n] * full + ([rest] if rest else []), int), None
