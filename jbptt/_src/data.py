"""Real data for the reproductions: a character corpus and the sunspots series.

Nothing is downloaded. The default character corpus is text every Python
install carries, the standard library's own source files; any UTF-8 text file
or a directory holding the Penn Treebank character files can be used instead.
The sunspots series comes with ``statsmodels`` (``pip install
jbptt[experiments]``).

Everything is returned as numpy arrays; online training wants time-major
streams ``[T, B]`` (:func:`streams`), the layout of ``jbptt.value_and_grad``.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jbptt._src import validation

# PTB character files as distributed with the Mikolov et al. (2012) data.
PTB_CHAR_FILES = ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")


class Corpus(NamedTuple):
    """An integer-encoded character corpus split into train/valid/test.

    Attributes:
      train, valid, test: ``int32`` arrays of character ids.
      vocab: the characters, ``vocab[i]`` is the character with id ``i``
        (sorted, built from all three splits so no id is unknown).
      source: where the text came from, for reports.
      n_chars: total number of characters over the three splits.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: tuple[str, ...]
    source: str
    n_chars: int

    def decode(self, ids) -> str:
        """Text of a sequence of ids."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel())


def read_text(path) -> str:
    """Read a UTF-8 text file, with clear errors for missing/empty/binary files.

    Raises:
      FileNotFoundError: ``path`` does not exist or is not a file.
      ValueError: the file is empty or not valid UTF-8.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"corpus file {str(p)!r} does not exist or is not a file."
        )
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(f"corpus file {str(p)!r} is empty; expected UTF-8 text.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus file {str(p)!r} is not valid UTF-8 text (byte {e.start}: "
            f"{e.reason}); pass a UTF-8 text file."
        ) from None


def stdlib_files() -> list[Path]:
    """The default corpus's files: top-level ``*.py`` of the standard library,
    sorted by name (a fixed order on a given Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def stdlib_text(max_chars: int = 2_000_000) -> str:
    """The standard library's sources concatenated in name order, capped.

    Files that are not UTF-8 are skipped (none are in CPython). The text of
    a given Python version is therefore fixed.
    """
    return "".join(_stdlib_texts(max_chars))[:max_chars]


def _stdlib_texts(max_chars: int) -> list[str]:
    """The texts of the standard library's files in name order, the last one
    cut so that they hold ``max_chars`` characters in all (or fewer)."""
    _check_positive_int("max_chars", max_chars)
    parts, n = [], 0
    for p in stdlib_files():
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t[: max_chars - n])
        n += len(parts[-1])
        if n >= max_chars:
            break
    return parts


def _ptb_text(path: Path) -> str:
    # PTB char files: characters separated by spaces, "_" marks a word
    # boundary, one sentence per line. Decode to plain text with newlines.
    lines = read_text(path).splitlines()
    return "".join(
        "".join(" " if c == "_" else c for c in line.split()) + "\n" for line in lines
    )


def _check_positive_int(name, value) -> int:
    return validation.positive_int(name, value)


def _check_fractions(valid_frac, test_frac):
    for name, f in (("valid_frac", valid_frac), ("test_frac", test_frac)):
        validation.real(
            name,
            f,
            low=0.0,
            high=0.5,
            low_open=True,
            high_open=True,
            what="a float in (0, 0.5)",
        )


def encode(texts: list[str], source: str) -> Corpus:
    """Build the vocabulary over ``texts = [train, valid, test]`` and encode."""
    vocab = tuple(sorted(set("".join(texts))))
    index = {c: i for i, c in enumerate(vocab)}
    lookup = np.vectorize(index.__getitem__, otypes=[np.int32])

    def enc(t):
        return lookup(np.array(list(t))) if t else np.zeros((0,), np.int32)

    tr, va, te = (enc(t) for t in texts)
    return Corpus(tr, va, te, vocab, source, sum(len(t) for t in texts))


def split_files(
    texts: list[str], valid_frac: float = 0.05, test_frac: float = 0.05, seed: int = 0
):
    """File-level split: whole files, in a seeded random order, fill the
    validation split to ``valid_frac`` of the characters, then the test split
    to ``test_frac``; the rest train (in their original order).

    Each split then samples the whole collection, where a contiguous split of
    files sorted by name holds out whichever few files sort last.

    Examples:
      >>> from jbptt._src import data
      >>> files = [c * 10 for c in "abcdefghij"]  # ten files of 10 characters
      >>> train, valid, test = data.split_files(files, 0.1, 0.1)
      >>> len(train), len(valid), len(test)  # one whole file each held out
      (80, 10, 10)
      >>> train == "".join(f for f in files if f not in (valid, test))
      True
    """
    _check_fractions(valid_frac, test_frac)
    n = sum(len(t) for t in texts)
    order = np.random.default_rng(seed).permutation(len(texts))
    held: list[list[int]] = [[], []]
    budget = [valid_frac * n, test_frac * n]
    filled = [0, 0]
    for i in order:
        if filled[0] < budget[0]:
            s = 0
        elif filled[1] < budget[1]:
            s = 1
        else:
            break
        held[s].append(int(i))
        filled[s] += len(texts[i])
    out = set(held[0]) | set(held[1])
    train = [t for i, t in enumerate(texts) if i not in out]
    parts = ["".join(train)] + ["".join(texts[i] for i in h) for h in held]
    if min(len(p) for p in parts) < 1:
        raise ValueError(
            f"{len(texts)} files are too few to split into train/valid/test "
            f"with valid_frac={valid_frac}, test_frac={test_frac}."
        )
    return parts


def split_text(text: str, valid_frac: float = 0.05, test_frac: float = 0.05):
    """Contiguous split: the first part trains, then valid, then test."""
    _check_fractions(valid_frac, test_frac)
    n = len(text)
    n_valid, n_test = int(n * valid_frac), int(n * test_frac)
    if min(n_valid, n_test, n - n_valid - n_test) < 1:
        raise ValueError(
            f"the text has {n} characters, too few to split into train/valid/"
            f"test with valid_frac={valid_frac}, test_frac={test_frac}."
        )
    a, b = n - n_valid - n_test, n - n_test
    return [text[:a], text[a:b], text[b:]]


def load_corpus(
    path=None,
    *,
    max_chars: int = 2_000_000,
    valid_frac: float = 0.05,
    test_frac: float = 0.05,
    split: str = "contiguous",
) -> Corpus:
    """Load a character corpus: stdlib sources, a text file, or PTB chars.

    Args:
      path: ``None`` for the default corpus (the Python standard library's
        top-level ``*.py`` files in name order); a UTF-8 text file (split
        contiguously into train/valid/test); or a directory holding
        ``ptb.char.train.txt``, ``ptb.char.valid.txt`` and
        ``ptb.char.test.txt`` (their own splits are used).
      max_chars: cap on the default corpus and on a single text file.
      valid_frac, test_frac: fractions held out from a single text.
      split: how the default corpus is held out: ``"contiguous"`` (the last
        characters of the name-ordered text: valid, then test) or ``"files"``
        (whole files in a fixed random order, :func:`split_files`, so that
        validation and test sample the whole library rather than the few
        files that sort last). A text file is always split contiguously.

    Returns:
      A :class:`Corpus`.

    Raises:
      FileNotFoundError: ``path`` is missing, or a directory lacks PTB files.
      ValueError: a file is empty, not UTF-8, or too short to split.

    Examples:
      >>> from jbptt._src import data
      >>> corpus = data.load_corpus(max_chars=10_000)
      >>> corpus.n_chars, len(corpus.train) > len(corpus.valid) > 0
      (10000, True)
      >>> corpus.decode(corpus.train[:4]) == data.stdlib_text(4)
      True
    """
    _check_positive_int("max_chars", max_chars)
    if split not in ("contiguous", "files"):
        raise ValueError(f"split must be 'contiguous' or 'files', got {split!r}.")
    if path is None:
        texts = _stdlib_texts(max_chars)
        source = f"Python {sysconfig.get_python_version()} stdlib *.py"
        if split == "files":
            parts = split_files(texts, valid_frac, test_frac)
            return encode(parts, source + " (file-level split, seed 0)")
        parts = split_text("".join(texts), valid_frac, test_frac)
        return encode(parts, source + " (sorted)")
    p = Path(os.fspath(path))
    if p.is_dir():
        files = [p / f for f in PTB_CHAR_FILES]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"directory {str(p)!r} is not a Penn Treebank character "
                f"directory: missing {missing}. Pass a text file or a directory "
                f"with {list(PTB_CHAR_FILES)}."
            )
        return encode([_ptb_text(f) for f in files], f"PTB chars at {p}")
    text = read_text(p)[:max_chars]
    return encode(split_text(text, valid_frac, test_frac), str(p))


def streams(ids, batch_size: int) -> np.ndarray:
    """Cut a 1-D id sequence into ``batch_size`` contiguous streams, time-major.

    Stream b is ``ids[b*L:(b+1)*L]`` with ``L = len(ids) // batch_size`` (the
    remainder is dropped), returned as ``[L, B]`` so that step t of all streams
    is one row: the layout of online training.

    Examples:
      >>> import numpy as np
      >>> from jbptt import data
      >>> data.streams(np.arange(7), 2).tolist()
      [[0, 3], [1, 4], [2, 5]]
    """
    _check_positive_int("batch_size", batch_size)
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}.")
    L = len(ids) // batch_size
    if L < 2:
        raise ValueError(
            f"ids of length {len(ids)} are too short for batch_size={batch_size}: "
            "each stream needs at least 2 steps."
        )
    return ids[: L * batch_size].reshape(batch_size, L).T


def next_char_pairs(stream: np.ndarray):
    """Inputs and targets for next-character prediction: ``(s[:-1], s[1:])``."""
    return stream[:-1], stream[1:]


class Series(NamedTuple):
    """A univariate series, normalised with training statistics.

    Attributes:
      values: the normalised series ``[N]`` (float64).
      n_train: the first ``n_train`` points are the training part; the rest
        is the held-out tail.
      mean, std: the training part's statistics (``raw = values·std + mean``).
      years: the time axis ``[N]``.
    """

    values: np.ndarray
    n_train: int
    mean: float
    std: float
    years: np.ndarray

    @property
    def train(self) -> np.ndarray:
        return self.values[: self.n_train]

    @property
    def test(self) -> np.ndarray:
        return self.values[self.n_train :]


def load_sunspots(test_size: int = 60) -> Series:
    """Yearly sunspot numbers 1700–2008 (``statsmodels.datasets.sunspots``).

    Args:
      test_size: number of final years held out (the tail).

    Raises:
      ImportError: statsmodels is missing (``pip install jbptt[experiments]``).
      ValueError: ``test_size`` leaves fewer than 20 training years.

    Examples:
      >>> from jbptt import data
      >>> s = data.load_sunspots(test_size=60)
      >>> len(s.values), s.n_train, round(float(s.train.mean()), 12)
      (309, 249, 0.0)
    """
    try:
        from statsmodels.datasets import sunspots
    except ImportError:
        raise ImportError(
            "the sunspots data ships with statsmodels, which is not installed: "
            "pip install 'jbptt[experiments]' (or pip install statsmodels)."
        ) from None
    df = sunspots.load_pandas().data
    raw = df["SUNACTIVITY"].to_numpy(dtype=np.float64)
    years = df["YEAR"].to_numpy(dtype=np.float64)
    _check_positive_int("test_size", test_size)
    n_train = len(raw) - test_size
    if n_train < 20:
        raise ValueError(
            f"test_size={test_size} leaves {n_train} training years of "
            f"{len(raw)}; at least 20 are needed."
        )
    mean, std = float(raw[:n_train].mean()), float(raw[:n_train].std())
    return Series((raw - mean) / std, n_train, mean, std, years)
