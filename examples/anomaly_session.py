"""Anomaly scores, typicality and adaptive K against a running server (`make serve`): docs/anomaly-detection.md."""

import numpy as np
from sklearn.datasets import load_digits

from vaeserve.client import Client

digits = load_digits().data  # raw units, 0..16
odd = np.stack([np.zeros(64), np.full(64, 16.0), 16.0 - digits[0]])  # blank, all white, inverted
with Client() as client:
    print(client.info().anomaly_scores)  # served: "", or why not
    s = client.score(np.concatenate([digits[1500:1503], odd]))  # the default scores, alpha 0.01
    for name, a in s.anomalies.items():
        print(f"{name:15s} p-value {a.p_value.round(3)}  flagged {a.is_anomaly.astype(int)}")
    print("k-hat", s.pareto_k.round(2), "warnings:", s.warnings)
    for label, batch in (
        ("100 digits it was trained on", digits[1600:1700]),
        ("the same, faint (x 0.6)", 0.6 * digits[1600:1700]),
    ):
        t = client.score(batch, typicality=True).typicality
        print(f"{label}: mean nll {t.mean_score:.2f} vs {t.expected:.2f}, p {t.p_value:.3f}, atypical {t.is_atypical}")
    faint = client.score(0.6 * digits[1600:1700])
    print("faint digits flagged one by one:", int(faint.is_anomaly.sum()), "of 100")
    ada = client.score(digits[:4], k=100, target_se=0.02)
    print("adaptive K:", ada.k_used, ada.log_px_se.round(3))
