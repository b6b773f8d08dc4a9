"""The Python client's calls against a running server (`make serve`): docs/client.md."""

import numpy as np
from sklearn.datasets import load_digits

from vaeserve.client import Client, InvalidArgumentError

digits = load_digits().data  # raw units: 0..16, shape (1797, 64)

with Client() as client:  # $VAESERVE_TARGET, else localhost:50051
    info = client.info()
    print(info.name, info.version, info.input_shape, info.likelihood, info.manifest.calibration.k)

    scores = client.score(digits[:500])  # K and seed: the calibration's (1000, 0)
    print(scores.log_px[:3], scores.log_px_se[:3])  # nats, with their standard errors
    one = scores[0]  # one input's numbers
    print(
        f"{one.log_px:.2f} ± {one.log_px_se:.3f}, ESS {one.ess:.0f}, k-hat {one.pareto_k:.2f}, "
        f"p-value {one.p_value:.3f}, anomaly {one.is_anomaly}"
    )
    print("flagged at alpha 0.01:", int(scores.is_anomaly.sum()), "of", len(scores))

    enc = client.encode(digits[:2], n_samples=3, seed=1)
    print(enc.z_mean.shape, enc.z_samples.shape)
    gen = client.sample(4, seed=2)
    print(gen.z.shape, gen.params["probs"].shape)
    try:
        client.score(np.zeros((2, 7)))
    except InvalidArgumentError as err:
        print(err.code.name, "-", err.details)
