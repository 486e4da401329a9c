"""Functions that model artifacts reference by import path: keep their names and behaviour.

A stored pipeline pickles these by module and name, so every server that loads the model imports
them from here; renaming or moving one breaks the artifacts already written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def as_text(x: pd.DataFrame) -> pd.DataFrame:
    """Categories as text and missing values as NaN, so bool, string and null encode alike."""
    return x.astype(str).astype(object).where(x.notna(), np.nan)
