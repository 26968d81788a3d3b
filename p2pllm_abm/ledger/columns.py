"""Append-only record tables (escrows, channels, unbondings, requests) addressed by row number."""

from __future__ import annotations

import numpy as np


class GrowingColumns:
    """Append-only columns addressed by row number (the ``ref`` of a transaction)."""

    def __init__(self, **dtypes: type) -> None:
        self._data = {name: np.zeros(16, dtype) for name, dtype in dtypes.items()}
        self.size = 0

    def append(self, **columns: np.ndarray) -> np.ndarray:
        n = len(next(iter(columns.values())))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        while self.size + n > len(next(iter(self._data.values()))):
            self._data = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self._data.items()}
        rows = np.arange(self.size, self.size + n)
        for name, values in columns.items():
            self._data[name][rows] = values
        self.size += n
        return rows

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["_data"][name]
        except KeyError:
            raise AttributeError(name) from None
