"""Every RPC with the generated stubs and the tensor codec, no client library: docs/grpc-api.md."""

import os

import grpc
import numpy as np
from sklearn.datasets import load_digits

from vaeserve.api import from_proto, to_proto
from vaeserve.api.v1 import vae_pb2 as pb
from vaeserve.api.v1 import vae_pb2_grpc

x = load_digits().data[:4]  # raw units, (4, 64) float64
target = os.environ.get("VAESERVE_TARGET", "localhost:50051")
stub = vae_pb2_grpc.VaeServiceStub(grpc.insecure_channel(target))

info = stub.GetModelInfo(pb.GetModelInfoRequest())
print(list(info.input_shape), info.latent_dim, info.execution_provider)

enc = stub.Encode(pb.EncodeRequest(x=to_proto(x), n_samples=3, seed=1))
print(from_proto(enc.z_mean).shape, from_proto(enc.z_samples).shape)
sir = stub.Encode(
    pb.EncodeRequest(x=to_proto(x), n_samples=100, proposals=5000, sampler=pb.POSTERIOR_SAMPLER_IMPORTANCE_RESAMPLED)
)
print("ESS of the 5000 proposals:", from_proto(sir.ess).round(1))

dec = stub.Decode(pb.DecodeRequest(z=enc.z_mean, sample=True, seed=2))
print(from_proto(dec.decoded.params["probs"]).shape)

smp = stub.Sample(pb.SampleRequest(n=16, seed=3, sample_x=True))
print(from_proto(smp.z).shape, from_proto(smp.decoded.x_sample).shape)

s = stub.Score(
    pb.ScoreRequest(x=to_proto(x), k=1000, seed=0, prior_estimate=True, per_dim=True),
    metadata=[("x-request-id", "job-17")],
)
print("log p(x)", from_proto(s.log_px).round(3), "se", from_proto(s.log_px_se).round(3))
print("ESS", from_proto(s.ess).round(0), "k-hat", from_proto(s.pareto_k).round(2))
print(s.anomaly.name, "p-values", from_proto(s.anomaly.p_value).round(3), "alpha", s.anomaly.alpha)
print(s.header.model_name, s.header.request_id)

replies = stub.ScoreStream(
    pb.ScoreRequest(x=to_proto(chunk), k=1, skip_anomaly=True) for chunk in np.array_split(load_digits().data, 10)
)
print("streamed:", sum(len(from_proto(r.elbo)) for r in replies), "inputs, in order")
