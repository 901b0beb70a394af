"""``--replot``: each experiment redraws its figure from the stored results in
``experiments/figures`` (copied to a temporary folder), runs nothing else and
writes nothing else."""

import importlib
import shutil
from pathlib import Path

import pytest

FIGURES = Path(__file__).resolve().parents[1] / "experiments" / "figures"

# (experiment, folder under experiments/figures, extra flags, files it reads,
#  the PNG it writes)
CASES = [
    ("adaptive_truncation", "", [], ["adaptive_truncation.json"],
     "adaptive_truncation.png"),
    ("pes_variance", "", [], ["pes_variance.json"], "pes_variance.png"),
    ("stream_cuts", "", [], ["stream_cuts.json"], "stream_cuts.png"),
    ("bias_sweep", "modern_bias_sweep", [], ["bias_sweep.csv", "bias_sweep.json"],
     "bias_sweep.png"),
    ("char_lm", "", [], ["char_lm.csv", "char_lm.json"], "char_lm.png"),
    ("char_lm", "", ["--name", "char_lm_gru"],
     ["char_lm_gru.csv", "char_lm_gru.json"], "char_lm_gru.png"),
    ("char_lm", "", ["--name", "char_lm_k64"],
     ["char_lm_k64.csv", "char_lm_k64.json"], "char_lm_k64.png"),
    ("long_memory", "", [], ["long_memory.csv", "long_memory.json"],
     "long_memory.png"),
]  # fmt: skip


@pytest.mark.parametrize(
    "experiment, folder, flags, reads, png",
    CASES,
    ids=[c[4].removesuffix(".png") for c in CASES],
)
def test_replot_redraws_the_stored_figure(
    experiment, folder, flags, reads, png, tmp_path, capsys
):
    for name in reads:
        shutil.copy(FIGURES / folder / name, tmp_path / name)
    module = importlib.import_module(f"experiments.{experiment}")
    assert module.main(["--replot", "--out", str(tmp_path), *flags]) is None
    assert (tmp_path / png).stat().st_size > 10_000  # a drawn figure
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*reads, png])
    assert str(tmp_path / png) in capsys.readouterr().out
