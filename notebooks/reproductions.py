# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reproductions: influence balancing, a character-level LM, sunspots
#
# Three studies of truncated backpropagation through time with jbptt, in
# their quick settings (seconds each). The full runs and their numbers are in
# `experiments/RESULTS.md`; the commands are
# `python -m experiments.influence_balancing`, `python -m experiments.char_lm`
# and `python -m experiments.sunspots`.

# %%
import os
import sys
import tempfile

sys.path.insert(0, os.path.abspath(".."))  # run from notebooks/: find experiments/

from IPython.display import Image, display

from experiments import char_lm, influence_balancing, sunspots

# tests pass JBPTT_NOTEBOOK_OUT to check these files; otherwise a fresh folder
out = os.environ.get("JBPTT_NOTEBOOK_OUT") or tempfile.mkdtemp()

# %% [markdown]
# ## 1. Influence balancing (Tallec & Ollivier 2017)
#
# $s_{t+1} = A s_t + \theta v$ with 23 units, $A_{ii} = A_{i,i+1} = 1/2$,
# $v = (+1^{\times 10}, -1^{\times 13})$ and loss $\frac12 (s^{(1)}_t - 1)^2$.
# The influence of $\theta$ on $s^{(1)}$ over the last $K$ steps changes sign
# late, so short truncations push $\theta$ the wrong way:

# %%
for K in (1, 10, 20, 40, 41, 80):
    print(f"S({K:>2}) = {influence_balancing.truncated_sensitivity(K):+.3f}")

# %%
ib = influence_balancing.main(["--quick", "--out", out])
display(Image(os.path.join(out, "influence_balancing.png")))

# %% [markdown]
# TBPTT(1) drifts away from $\theta^* = -1/6$; ARTBP, at the cost of
# TBPTT(16), converges:

# %%
by = {s["estimator"]: s for s in ib}
artbp = next(s for name, s in by.items() if name.startswith("ARTBP"))
assert by["TBPTT(k=1)"]["distance_to_optimum"] > artbp["distance_to_optimum"]
{name: round(s["distance_to_optimum"], 3) for name, s in by.items()}

# %% [markdown]
# ## 2. Character-level language model on the standard library's sources
#
# Online TBPTT(k) against ARTBP with mean segment length k: the same
# characters, the same backward steps, about the same number of updates
# (each seed's count is reported). Mean ± standard error over seeds of the
# validation bits per character against updates and wall-clock; test bpc
# once at the end. The quick form runs 2 seeds of a tiny model.

# %%
lm = char_lm.main(["--quick", "--out", out])
display(Image(os.path.join(out, "char_lm.png")))
print("unigram baseline:", round(lm["unigram_valid_bpc"], 3), "bpc")
{
    s["run"]: (round(s["final_valid_bpc"], 3), round(s["test_bpc"], 3))
    for s in lm["summary"]
}

# %% [markdown]
# ## 3. Sunspots: one-step-ahead forecasts on the last 60 years

# %%
ss = sunspots.main(["--quick", "--out", out])
display(Image(os.path.join(out, "sunspots.png")))
ss["test_rmse"]
