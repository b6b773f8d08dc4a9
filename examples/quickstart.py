"""Score digits for anomalies against a running server (`make serve`): the README's example."""

import numpy as np
from sklearn.datasets import load_digits

from vaeserve.client import Client

digits = load_digits().data  # raw units: pixels 0..16, shape (1797, 64)
x = np.concatenate([digits[1500:1503], np.zeros((1, 64)), 16 - digits[:1]])  # 3 digits, a blank, an inverse

with Client() as client:  # $VAESERVE_TARGET, else localhost:50051
    scores = client.score(x)  # the calibration's K (1000) and seed; flags at alpha = 0.01
    for row in scores:
        print(f"log p(x) {row.log_px:8.2f} ± {row.log_px_se:.3f}  p-value {row.p_value:.3f}  anomaly {row.is_anomaly}")
