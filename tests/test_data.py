"""Corpus and series loading: defaults, splits, PTB files and clear errors."""

import numpy as np
import pytest

from jbptt import data
from jbptt._src import data as data_files
from jbptt._src.data import _stdlib_texts


def test_default_corpus_is_deterministic_and_split():
    a = data.load_corpus(max_chars=20_000)
    b = data.load_corpus(max_chars=20_000)
    assert a.n_chars == 20_000
    assert len(a.train) + len(a.valid) + len(a.test) == 20_000
    assert len(a.valid) == len(a.test) == 1000
    for x, y in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    text = data_files.stdlib_text(20_000)
    assert a.decode(np.concatenate([a.train, a.valid, a.test])) == text
    # the first stdlib file in name order opens the corpus
    first = data_files.stdlib_files()[0].read_text(encoding="utf-8")
    assert text.startswith(first[:100])
    assert a.vocab == tuple(sorted(set(text)))


def test_file_level_split_holds_whole_files_in_a_fixed_order():
    c = data.load_corpus(max_chars=400_000, split="files")
    again = data.load_corpus(max_chars=400_000, split="files")
    for x, y in zip(c[:3], again[:3], strict=True):
        np.testing.assert_array_equal(x, y)
    assert c.n_chars == 400_000 and "file-level" in c.source
    # each held-out split is a concatenation of whole files, none of them in
    # train, and holds at least its fraction of the characters
    texts = _stdlib_texts(400_000)
    train, valid, test = (c.decode(x) for x in c[:3])
    for held in (valid, test):
        assert len(held) >= 0.05 * 400_000
        pieces = [t for t in texts if t and t in held]
        assert sum(len(t) for t in pieces) == len(held)
        assert not any(t in train for t in pieces if len(t) > 200)
    assert len(train) + len(valid) + len(test) == 400_000
    # not the files that sort last, as the contiguous split would hold out
    assert not test.endswith(texts[-1][-1000:])


def test_file_level_split_errors():
    with pytest.raises(ValueError, match="split must be"):
        data.load_corpus(max_chars=10_000, split="random")
    with pytest.raises(ValueError, match="too few to split"):
        data_files.split_files(["abc", "def"], 0.05, 0.05)
    files = [c * 10 for c in "abcdefghij"]
    train, valid, test = data_files.split_files(files, 0.1, 0.1)
    assert len(valid) == len(test) == 10 and valid != test
    assert train == "".join(f for f in files if f not in (valid, test))


def test_text_file_roundtrip_and_vocab(tmp_path):
    p = tmp_path / "t.txt"
    text = "héllo wörld, " * 50
    p.write_text(text, encoding="utf-8")
    c = data.load_corpus(p, valid_frac=0.1, test_frac=0.2)
    assert c.n_chars == len(text)
    assert c.decode(c.train) + c.decode(c.valid) + c.decode(c.test) == text
    assert len(c.test) == int(len(text) * 0.2)
    assert "ö" in c.vocab and c.train.dtype == np.int32
    assert c.source == str(p)


def test_ptb_directory(tmp_path):
    lines = {"train": "a _ c a t\nt h e _ d o g\n", "valid": "a _ b\n", "test": "x\n"}
    for split, body in lines.items():
        (tmp_path / f"ptb.char.{split}.txt").write_text(body)
    c = data.load_corpus(tmp_path)
    assert c.decode(c.train) == "a cat\nthe dog\n"
    assert c.decode(c.valid) == "a b\n"
    assert c.decode(c.test) == "x\n"
    assert "_" not in c.vocab


def test_ptb_directory_missing_files(tmp_path):
    (tmp_path / "ptb.char.train.txt").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="ptb.char.valid.txt"):
        data.load_corpus(tmp_path)


def test_empty_file_error(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(p)
    p.write_bytes(b"  \n\n")
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(p)


def test_non_utf8_error(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        data.load_corpus(p)


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_corpus(tmp_path / "nope.txt")


def test_too_short_and_bad_args(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("abc")
    with pytest.raises(ValueError, match="too few"):
        data.load_corpus(p)
    with pytest.raises(ValueError, match="valid_frac"):
        data.load_corpus(valid_frac=0.7)
    with pytest.raises(ValueError, match="max_chars"):
        data.load_corpus(max_chars=0)


def test_streams_time_major():
    ids = np.arange(23)
    s = data.streams(ids, 4)
    assert s.shape == (5, 4)
    np.testing.assert_array_equal(s[:, 1], np.arange(5, 10))
    x, y = data_files.next_char_pairs(s)
    np.testing.assert_array_equal(y[:-1], x[1:])
    with pytest.raises(ValueError, match="batch_size"):
        data.streams(ids, 0)
    with pytest.raises(ValueError, match="too short"):
        data.streams(ids, 20)
    with pytest.raises(ValueError, match="1-D"):
        data.streams(ids.reshape(1, -1), 2)


def test_sunspots_normalised_tail():
    s = data.load_sunspots(test_size=50)
    assert s.years[0] == 1700 and len(s.values) == 309
    assert s.n_train == 259 and len(s.test) == 50
    np.testing.assert_allclose(s.train.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.train.std(), 1.0, rtol=1e-12)
    assert s.std > 10  # raw sunspot numbers, not already normalised
    with pytest.raises(ValueError, match="test_size"):
        data.load_sunspots(test_size=300)


def test_sunspots_missing_statsmodels(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("statsmodels"):
            raise ImportError("no statsmodels")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"jbptt\[experiments\]"):
        data.load_sunspots()
