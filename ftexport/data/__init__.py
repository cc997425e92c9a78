"""Data: splits read from files or the Hub, checked, with label ids; the format decides what a
split is (one label per text, or one tag per word), and nothing here knows about tasks."""

from .base import SPLITS, Data, Split
from .files import detect_format, read_table
from .splits import fingerprint, load_data, split_path

__all__ = ["SPLITS", "Data", "Split", "detect_format", "fingerprint", "load_data", "read_table", "split_path"]
