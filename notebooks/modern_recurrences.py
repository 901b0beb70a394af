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
# # Modern recurrences: truncation against exact online gradients
#
# Diagonal linear recurrences — the LRU (Orvieto et al. 2023), minGRU and
# minLSTM (Feng et al. 2024) — update their state as
# `h_t = a_t ⊙ h_{t−1} + b_t`. For the LRU `a_t = λ` is constant per unit,
# so a unit remembers its input for about `1/(1 − |λ|)` steps, and the
# gradient through `τ` steps of the recurrence carries the factor `λ^τ`.
# Truncating backpropagation at depth `k` (TBPTT(k)) drops every lag `≥ k`:
# for a unit near `|λ| = 1` that is most of its gradient.
#
# This notebook, with jbptt's public API only:
#
# 1. draws the closed-form share of the per-lag weight that TBPTT(k) drops,
#    as a function of `|λ|` (`jbptt.diagnostics.geometric_truncation_bias`),
# 2. checks jbptt's exact closed form of TBPTT(k)'s bias on an LRU
#    (`diagnostics.diagonal_truncation_bias`) against the measured one,
# 3. trains an LRU online on a recall task whose answer lies `D > k` steps
#    back, with TBPTT(k), ARTBP at mean depth k, exact diagonal RTRL
#    (`forward_mode.rtrl()`) and, offline, full BPTT, at matched updates.
#
# It runs in a few minutes on a 2-core CPU; with `JBPTT_QUICK=1`
# in the environment it runs tiny settings in seconds (the test suite does).
# The full study, with minGRU, the LSTM, UORO, three delays and three seeds,
# is `python -m experiments.long_memory` (experiments/RESULTS.md).

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import jbptt
from jbptt import cells, diagnostics, estimators, forward_mode, train, truncation

QUICK = os.environ.get("JBPTT_QUICK") == "1"
D = 8 if QUICK else 64  # recall delay
K = 4 if QUICK else 16  # truncation depth, ARTBP's mean segment, RTRL's update interval
H = 4 if QUICK else 16  # LRU units
B = 4 if QUICK else 16  # streams
UPDATES = 24 if QUICK else 1024
print(f"D = {D}, k = {K}, H = {H}, B = {B}, {UPDATES} updates")

# %% [markdown]
# ## 1. The share of the gradient TBPTT(k) drops, in |λ| alone
#
# For a stationary input, a unit with modulus `|λ|` weighs lag `τ` by
# `|λ|^τ`; TBPTT(k) keeps, on average over a chunk, the lags inside it.
# The dropped share is `f(|λ|, k) = |λ|(1 − |λ|^k) / (k(1 − |λ|))`: 1 at
# `|λ| = 1` for every finite k. A unit that must remember D steps needs
# `|λ|^D` not too small, i.e. `1 − |λ| ≲ 1/D`: there, TBPTT(k < D) drops
# most of it.

# %%
gap = np.logspace(-4, 0, 200)  # 1 − |λ|
fig, ax = plt.subplots(figsize=(6, 3.5))
for k in (4, 16, 64, 256):
    f = diagnostics.geometric_truncation_bias(jnp.asarray(1 - gap), k)
    ax.semilogx(gap, np.asarray(f), label=f"TBPTT({k})")
ax.axvline(1 / D, color="gray", ls=":", label=f"1 − |λ| = 1/D (D = {D})")
ax.set_xlabel("1 − |λ| (memory ≈ 1/(1 − |λ|) steps)")
ax.set_ylabel("dropped share of the per-lag weight")
ax.set_title("TBPTT(k)'s truncation bias in |λ| alone (stationary input)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 2. The exact closed form equals the measured bias
#
# `diagnostics.diagonal_truncation_bias` sums the pairs of steps that cross
# a chunk boundary in closed form (no reverse scan) and returns TBPTT(k)'s
# gradient minus the exact one, a tree like the params. We compare it with
# jbptt's reverse scan with TBPTT(k)'s link weights (in float32 here, so
# they agree to float32 round-off; under `jax_enable_x64` to about 1e-15).

# %%
lru = cells.lru(r_min=0.9, r_max=0.999)
p_lru = lru.init(jax.random.key(0), 2, H)
xs_b = jax.random.normal(jax.random.key(1), (4 * K, B, 2))
h0_b = lru.initial_state(p_lru, (B,))


def mse(p, out, y):
    return jnp.mean((out - y) ** 2)


vg_lru = jbptt.value_and_grad(lru, mse)
g_full = vg_lru(p_lru, h0_b, xs_b, xs_b)[1]
g_k = vg_lru(p_lru, h0_b, xs_b, xs_b, truncation.tbptt(4 * K, K))[1]
closed = diagnostics.diagonal_truncation_bias(lru, mse, p_lru, h0_b, xs_b, xs_b, K)
for name in ("nu_log", "theta_log", "B_re"):
    measured = g_k[name] - g_full[name]
    print(f"{name:9s}: closed form − measured, max |·| = "
          f"{float(jnp.max(jnp.abs(closed[name] - measured))):.1e} "
          f"(bias max |·| = {float(jnp.max(jnp.abs(measured))):.1e})")  # fmt: skip

# %% [markdown]
# ## 3. Online learning of a recall D steps back
#
# A stream of episodes of `D + 1` steps, each starting with a reset (the
# state restarts; `resets=` of `Trainer.run`). Channel 0 carries a cue
# `c ~ N(0, 1)` at the episode's first step, channel 1 distractor noise at
# every step; the loss is `(ŷ − c)²` at the episode's last step only. The
# targets carry the cue and the mask of the scored step.


# %%
def recall(key, T, batch):
    """Inputs [T, B, 2], targets [T, B, 2] (cue, mask) and resets [T, B]."""
    k_cue, k_noise = jax.random.split(key)
    pos, ep = jnp.arange(T) % (D + 1), jnp.arange(T) // (D + 1)
    cue = jax.random.normal(k_cue, (T // (D + 1) + 1, batch))[ep]
    first, last = (pos == 0)[:, None], (pos == D)[:, None]
    xs = jnp.stack([jnp.where(first, cue, 0.0),
                    jax.random.normal(k_noise, (T, batch))], -1)  # fmt: skip
    ys = jnp.stack([jnp.where(last, cue, 0.0), jnp.broadcast_to(last, (T, batch))], -1)
    return xs, ys.astype(xs.dtype), jnp.broadcast_to(first, (T, batch))


model = jbptt.readout(cells.lru(r_min=0.99, r_max=0.9999), output_size=1)


def loss_fn(params, out, y):  # squared error at the scored step, batch mean
    err = model.predict(params, out)[..., 0] - y[..., 0]
    return jnp.mean(y[..., 1] * err**2)


xs_eval, ys_eval, _ = recall(jax.random.key(99), D + 1, 128)  # held-out episodes
forward = jax.jit(jbptt.loss(model.cell, loss_fn))


def score(params):  # MSE at the recall step over the trivial predictor's (ŷ = 0)
    L, _ = forward(params, model.cell.initial_state(params, (128,)), xs_eval, ys_eval)
    return float(L / jnp.mean(ys_eval[..., 0] ** 2 * ys_eval[..., 1]) / (D + 1))


params0 = model.init(jax.random.key(0), 2, H)
opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
print(f"score at initialisation: {score(params0):.3f} (1 = the trivial predictor)")

# %% [markdown]
# Forward-mode estimators update at every step by default. To match
# TBPTT(k)'s update count, RTRL here updates every k steps with the sum of
# its per-step gradients (`forward_mode.rtrl().every(k)`); the influence is
# carried across updates as before.

# %%
online = {
    f"TBPTT({K})": estimators.tbptt(K),
    f"ARTBP (poly-tail, mean {K})": estimators.artbp_matched(K, "poly_tail"),
    f"exact diagonal RTRL (update every {K})": forward_mode.rtrl().every(K),
}
if QUICK:  # seconds: ARTBP's random segment lengths compile several lengths
    del online[f"ARTBP (poly-tail, mean {K})"]
xs, ys, resets = recall(jax.random.key(1), UPDATES * K, B)
curves = {}
for name, est in online.items():
    tr = train.Trainer(model.cell, loss_fn, opt, est,
                       buckets=train.Buckets(min_bucket=K, max_buckets=3))  # fmt: skip
    curve = [(0, 0.0, score(params0))]

    def record(e, curve=curve):
        if (e.index + 1) % max(1, UPDATES // 8) == 0:
            curve.append((e.index + 1, e.seconds, score(e.state.params)))

    state, hist = tr.run(tr.init(params0, jax.random.key(2)), xs, ys,
                         resets=resets, callbacks=[record])  # fmt: skip
    curves[name] = curve
    print(f"{name:38s} {len(hist.length):4d} updates: score {curve[-1][2]:.3f}")

# %% [markdown]
# Full BPTT, offline: each update on a fresh batch of whole episodes.

# %%
vg = jbptt.value_and_grad(model.cell, loss_fn)


@jax.jit
def bptt_update(params, opt_state, i):
    xs_i, ys_i, _ = recall(jax.random.fold_in(jax.random.key(3), i), D + 1, B)
    (L, _), g = vg(params, model.cell.initial_state(params, (B,)), xs_i, ys_i)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state


params, opt_state = params0, opt.init(params0)
bptt_update(params, opt_state, 0)  # compile
curve, clock = [(0, 0.0, score(params0))], 0.0
for i in range(UPDATES):
    t0 = time.perf_counter()
    params, opt_state = jax.block_until_ready(bptt_update(params, opt_state, i))
    clock += time.perf_counter() - t0
    if (i + 1) % max(1, UPDATES // 8) == 0:
        curve.append((i + 1, clock, score(params)))
curves["full BPTT (offline)"] = curve
print(f"{'full BPTT (offline)':38s} {UPDATES:4d} updates: score {curve[-1][2]:.3f}")

# %%
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
for name, c in curves.items():
    u, s, v = zip(*c, strict=True)
    a1.plot(u, v, ".-", label=name)
    a2.plot(s, v, ".-", label=name)
for a in (a1, a2):
    a.axhline(1.0, color="gray", ls=":", label="trivial predictor ŷ = 0")
    a.set_ylabel("held-out MSE / trivial MSE")
    a.grid(True, alpha=0.3)
a1.set_xlabel("updates")
a2.set_xlabel("training wall-clock (s)")
a1.legend(fontsize=7)
fig.suptitle(f"LRU({H}) recall after D = {D} steps, k = {K}, B = {B}, one seed, "
             "scored on 128 held-out episodes")  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# What to expect (full settings, D = 64 > k = 16; one seed, float32, on the
# 2-core CPU: TBPTT 0.74, ARTBP 0.42, exact RTRL 0.04, BPTT 0.000 after
# about 1024 updates): the recall's gradient reaches the cue only through
# 64 steps of the recurrence. TBPTT(16) never backpropagates that far, so
# the input weights and |λ| get no signal from the answer and it stays far
# above BPTT. ARTBP's poly-tail cuts let a segment survive 64 steps with a
# small probability (about 4 %) and reweight it: unbiased, noisy (and
# clipped), between the two. Exact diagonal RTRL carries `∂h_t/∂θ` forward,
# so its online gradient has no truncation at all: it comes close to BPTT
# at the same number of updates, from one pass along the stream (which
# holds 16× fewer answers than BPTT's fresh batches). The three-seed study
# with minGRU, the LSTM, UORO and D up to 1024 is in experiments/RESULTS.md.
