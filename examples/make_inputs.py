"""Writes the input files the docs' command-line examples use, in the current folder.

digits.npy  the first 200 rows of scikit-learn's digits, raw units (0..16), shape (200, 64)
odd.npy     an all-white square, an inverted digit and a normal digit, shape (3, 64)
bright.npy  a digit whose first pixel reads 200: outside the model's 0..16 range
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits().data
np.save("digits.npy", digits[:200])
np.save("odd.npy", np.stack([np.full(64, 16.0), 16.0 - digits[0], digits[1]]))
bright = digits[:1].copy()
bright[0, 0] = 200.0
np.save("bright.npy", bright)
print("wrote digits.npy (200, 64), odd.npy (3, 64), bright.npy (1, 64)")
