"""Run by tests/v2 with the tritonclient venv (never imported by the tests: tritonclient's `inference`
stubs and protobuf 6 cannot share a process with vaeserve's). Calls every V2 endpoint of a vaeserve
server through tritonclient's gRPC and HTTP clients and prints what came back as JSON.

usage: python triton_calls.py GRPC_ADDRESS HTTP_ADDRESS X.npy
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException


def main() -> None:
    grpc_address, http_address, x_path = sys.argv[1:4]
    x = np.load(x_path)  # uint8 images [B, 1, 8, 8]
    out: dict[str, object] = {}
    for kind, module, address in (("grpc", tgrpc, grpc_address), ("http", thttp, http_address)):
        client = module.InferenceServerClient(address)
        meta = client.get_model_metadata("digits")
        enc_meta = client.get_model_metadata("digits.encode", "1")
        if kind == "grpc":
            outputs = [o.name for o in meta.outputs]
            inputs = [(i.name, i.datatype, list(i.shape)) for i in meta.inputs]
            enc_outputs = [o.name for o in enc_meta.outputs]
            server = client.get_server_metadata().name
        else:
            outputs = [o["name"] for o in meta["outputs"]]
            inputs = [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]]
            enc_outputs = [o["name"] for o in enc_meta["outputs"]]
            server = client.get_server_metadata()["name"]
        tensor = module.InferInput("x", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        wanted = [module.InferRequestedOutput(n) for n in ("log_px", "log_px_se", "ess", "is_anomaly", "elbo")]
        scored = client.infer("digits", [tensor], outputs=wanted, parameters={"k": 100, "seed": 7})
        every = client.infer("digits", [tensor], parameters={"k": 100, "seed": 7, "anomaly_scores": "nll"})
        encoded = client.infer("digits.encode", [tensor], model_version="1")
        try:
            client.infer("nope", [tensor])
            missing = "no error"
        except InferenceServerException as exc:
            missing = str(exc.status()) + " " + exc.message()
        try:
            bad = module.InferInput("x", [2, 7], "FP32")
            bad.set_data_from_numpy(np.zeros((2, 7), np.float32))
            client.infer("digits", [bad])
            refused = "no error"
        except InferenceServerException as exc:
            refused = str(exc.status()) + " " + exc.message()
        out[kind] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("digits"),
            "absent_ready": client.is_model_ready("nope"),
            "server": server,
            "inputs": inputs,
            "outputs": outputs,
            "encode_outputs": enc_outputs,
            "log_px": scored.as_numpy("log_px").tolist(),
            "log_px_se": scored.as_numpy("log_px_se").tolist(),
            "ess": scored.as_numpy("ess").tolist(),
            "elbo": scored.as_numpy("elbo").tolist(),
            "is_anomaly": scored.as_numpy("is_anomaly").tolist(),
            "every_percentile": every.as_numpy("anomaly_percentile").tolist(),
            "z_mean": encoded.as_numpy("z_mean").tolist(),
            "missing": missing,
            "refused": refused,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
