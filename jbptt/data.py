"""Real data for experiments: character corpora and the sunspots series."""

from jbptt._src import data as _data
from jbptt._src.data import Corpus as Corpus
from jbptt._src.data import Series as Series
from jbptt._src.data import load_corpus as load_corpus
from jbptt._src.data import load_sunspots as load_sunspots
from jbptt._src.data import streams as streams
from jbptt._src.deprecations import Moved as _Moved
from jbptt._src.deprecations import forward as _forward

_FILES = "load_corpus(...) (file helpers are internal)"
_deprecated = {
    "PTB_CHAR_FILES": _Moved(_data.PTB_CHAR_FILES, _FILES),
    "read_text": _Moved(_data.read_text, _FILES),
    "split_files": _Moved(_data.split_files, _FILES),
    "stdlib_files": _Moved(_data.stdlib_files, _FILES),
    "stdlib_text": _Moved(_data.stdlib_text, _FILES),
    "next_char_pairs": _Moved(_data.next_char_pairs, "(stream[:-1], stream[1:])"),
}
__getattr__ = _forward(__name__, _deprecated)
