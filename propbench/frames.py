"""The frame's contract: its columns and their dtypes, one set whichever way a frame is made
(:func:`probe`, :func:`propbench.run`, :func:`propbench.load`, a sweep's ``sweep.csv``).

Label columns are pandas categoricals (a few distinct strings repeated on every row),
counts ``int64``, measurements and theory ``float64``. A frame that lacks a column (a
``probe`` frame has no config columns) simply does not get it.
"""

from __future__ import annotations

import pandas as pd

# Every frame: one row per (trial, layer, site, quantity).
COLUMN_TYPES = {
    "trial": "int64", "layer": "int64", "module": "category", "site": "category",
    "quantity": "category", "mean": "float64", "var": "float64", "second_moment": "float64",
    "n": "int64", "nonfinite": "int64", "channel_mean_sq": "float64", "channel_var": "float64",
}
# Columns added after the first release: absent from older results, read as empty.
OPTIONAL_COLUMN_TYPES = {
    "theory": "float64",  # the mean-field prediction of var (empty where none applies)
    "sublayer": "Int64",  # the weight layer within a residual branch (empty elsewhere)
}
# A run's config, on every row of run() and load() frames; sweep.csv adds the job number.
CONFIG_COLUMNS = ["model", "act", "init", "norm", "depth", "width", "batch_size", "seed", "dtype"]
CONFIG_COLUMN_TYPES = {
    "model": "category", "act": "category", "init": "category", "norm": "category",
    "depth": "int64", "width": "int64", "batch_size": "int64", "seed": "int64",
    "dtype": "category", "sigma_w2": "float64", "sigma_b2": "float64", "job": "int64",
}
ALL_TYPES = {**COLUMN_TYPES, **OPTIONAL_COLUMN_TYPES, **CONFIG_COLUMN_TYPES}


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the contract's dtype for each contract column it has (a label column's
    categories: its values, sorted). Other columns (a sweep's override keys) stay as they
    are. ValueError/TypeError for a value that does not fit its column."""
    kinds = {column: kind for column, kind in ALL_TYPES.items()
             if column in frame and not _has_type(frame[column], kind)}
    return frame.astype(kinds) if kinds else frame


def _has_type(column: pd.Series, kind: str) -> bool:
    """Whether ``column`` already is of ``kind`` (a categorical: with sorted categories)."""
    if kind == "category":
        return (isinstance(column.dtype, pd.CategoricalDtype)
                and column.cat.categories.is_monotonic_increasing)
    return column.dtype == kind
