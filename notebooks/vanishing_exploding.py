# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Vanishing and exploding gradients, measured
#
# For $h_t = f(\theta, h_{t-1}, x_t)$ with per-step losses $\ell_t$, the part of
# the gradient that travels $\tau$ steps back is
# $u_{t,\tau} = (\partial h_t/\partial h_{t-\tau})^\top \partial\ell_t/\partial h_t
# = J_{t-\tau+1}^\top \cdots J_t^\top\, \partial\ell_t/\partial h_t$.
# `jbptt.diagnostics.per_lag_norms` computes $\lVert u_{t,\tau}\rVert$ for all
# $t, \tau$ in one reverse scan, carrying a lag-indexed buffer of cotangents.
# If the step Jacobians contract, the profile decays geometrically (vanishing
# gradients); if they expand, it grows (exploding gradients). The top
# finite-time Lyapunov exponent of the Jacobian product is the asymptotic
# log-slope. The full form runs in seconds to a minute on a CPU;
# `JBPTT_QUICK=1` (the test suite) runs a tiny one.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jbptt
from jbptt import cells, diagnostics, truncation

jax.config.update("jax_enable_x64", True)
QUICK = os.environ.get("JBPTT_QUICK") == "1"
T, B, H = (20, 4, 6) if QUICK else (200, 16, 32)
key = jax.random.key(0)


def with_radius(params, radius, key):
    """Elman params with a Gaussian W rescaled to spectral radius `radius`."""
    W = jax.random.normal(key, params["W"].shape)
    W = W * radius / np.max(np.abs(np.linalg.eigvals(np.asarray(W))))
    return {**params, "W": W}


# %% [markdown]
# ## Per-lag gradient norms: tanh Elman below, at and above radius 1, and an LSTM

# %%
xs = jax.random.normal(jax.random.fold_in(key, 1), (T, B, 2))
ys = jnp.concatenate([jnp.zeros((3, B, 1)), xs[:-3, :, :1]])  # recall x 3 steps back
elman = jbptt.readout(cells.elman("tanh"), output_size=1)
lag_fn = jax.jit(diagnostics.per_lag_norms(elman.cell, elman.loss_fn, T // 2))
jac_fn = jax.jit(diagnostics.step_jacobians, static_argnums=0)

fig, ax = plt.subplots(figsize=(6, 4))
for radius in (0.5, 1.0, 2.0):
    p = elman.init(jax.random.fold_in(key, 2), 2, H)
    p["cell"] = with_radius(p["cell"], radius, jax.random.fold_in(key, 3))
    h0 = elman.cell.initial_state(p, (B,))
    n = lag_fn(p, h0, xs, ys).mean
    lyap = diagnostics.lyapunov_exponents(jac_fn(elman.cell, p, h0, xs))[:, 0].mean()
    print(
        f"radius {radius}: slope {float(diagnostics.decay_rate(n)):+.3f}/step, "
        f"top Lyapunov exponent {float(lyap):+.3f}, "
        f"memory length (1%) {int(diagnostics.memory_length(n))}"
    )
    ax.semilogy(n / n[0], label=f"tanh Elman, ρ(W) = {radius}")

lstm = jbptt.readout(cells.lstm(), output_size=1)
p = lstm.init(jax.random.fold_in(key, 4), 2, H)
n = jax.jit(diagnostics.per_lag_norms(lstm.cell, lstm.loss_fn, T // 2))(
    p, lstm.cell.initial_state(p, (B,)), xs, ys
).mean
ax.semilogy(n / n[0], "k--", label="LSTM (PyTorch init)")
ax.set_xlabel("lag τ")
ax.set_ylabel("‖(∂h_t/∂h_{t-τ})ᵀ ∂ℓ_t/∂h_t‖ / lag 0")
ax.legend()
plt.show()

# %% [markdown]
# The fitted slope of log-norm against lag and the top Lyapunov exponent agree:
# both measure the per-step growth rate of back-propagated cotangents.
#
# ## Clipping
# `optax.clip_by_global_norm(c)` rescales the whole gradient to norm ≤ c (keeps
# its direction); `optax.clip(c)` clips each entry (changes the direction).

# %%
import optax

g = {"W": jnp.full((H, H), 1e6), "b": jnp.ones(H)}  # an exploded gradient
for name, tx in [
    ("global norm", optax.clip_by_global_norm(1.0)),
    ("element-wise", optax.clip(0.1)),
]:
    u, _ = tx.update(g, tx.init(g))
    print(
        f"{name}: ‖g‖ = {float(optax.tree.norm(g)):.3g} → "
        f"‖clipped‖ = {float(optax.tree.norm(u)):.3g}"
    )

# %% [markdown]
# ## The per-lag profile predicts TBPTT(k) bias
# TBPTT(k) drops every $u_{t,\tau}$ whose path crosses a cut. The share of the
# profile's mass it drops (`dropped_fraction`) tracks the exact relative bias
# $\lVert g_k - g\rVert/\lVert g\rVert$ (`relative_bias`, one vmap over k).

# %%
p = elman.init(jax.random.fold_in(key, 2), 2, H)
p["cell"] = with_radius(p["cell"], 1.0, jax.random.fold_in(key, 3))
h0 = elman.cell.initial_state(p, (B,))
prof = diagnostics.per_lag_norms(elman.cell, elman.loss_fn, T, per_step=True)(
    p, h0, xs, ys
)
ks = [1, 2, 4, 8, 16]
ws = jnp.stack([truncation.tbptt(T, k) for k in ks])
bias = jax.vmap(
    diagnostics.relative_bias(elman.cell, elman.loss_fn),
    in_axes=(None, None, None, None, 0),
)(p, h0, xs, ys, ws)
dropped = jax.vmap(diagnostics.dropped_fraction, in_axes=(None, 0))(prof.per_step, ws)
for k, d, b in zip(ks, dropped, bias, strict=True):
    print(f"TBPTT({k:2d}): dropped mass {float(d):.3f}   exact bias {float(b):.3f}")
assert float(bias[0]) > float(bias[-1])

fig, ax = plt.subplots(figsize=(6, 4))
lags = np.arange(1, T)
ax.loglog(lags, prof.mean[1:] / prof.mean[0], label="per-lag norm / lag 0 (x = τ)")
ax.loglog(ks, dropped, "o-", label="mass TBPTT(k) drops (x = k)")
ax.loglog(ks, bias, "s-", label="exact ‖g_k − g‖/‖g‖ (x = k)")
ax.set_xlabel("lag τ / truncation length k")
ax.set_ylabel("relative size")
ax.legend()
plt.show()
