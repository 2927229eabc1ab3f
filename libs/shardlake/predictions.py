"""Column names of a predictions table, shared by the map stage, the reduce stage and the writers.

Kept apart from ``scoring`` so that the reduce stage's transforms can name them without
importing the model (and torch) on the driver.
"""
from __future__ import annotations

PREDICTION = "prediction"
SCORE = "score"
SOURCE_ROW_HASH = "source_row_hash"  # the clean row's content hash at scoring time
