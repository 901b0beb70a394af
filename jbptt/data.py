"""Real data for experiments: character corpora and the sunspots series."""

from jbptt._src.data import PTB_CHAR_FILES as PTB_CHAR_FILES
from jbptt._src.data import Corpus as Corpus
from jbptt._src.data import Series as Series
from jbptt._src.data import load_corpus as load_corpus
from jbptt._src.data import load_sunspots as load_sunspots
from jbptt._src.data import next_char_pairs as next_char_pairs
from jbptt._src.data import read_text as read_text
from jbptt._src.data import split_files as split_files
from jbptt._src.data import stdlib_files as stdlib_files
from jbptt._src.data import stdlib_text as stdlib_text
from jbptt._src.data import streams as streams
