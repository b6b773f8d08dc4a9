"""tritonclient, Triton's own client, against vaeserve over gRPC and HTTP: docs/v2.md.

Run it in an environment with `pip install "tritonclient[grpc,http]"` (tritonclient needs protobuf < 7,
so not the vaeserve client's environment), in the folder where examples/make_inputs.py wrote digits.npy.
$VAESERVE_TARGET and $VAESERVE_HTTP override the addresses.
"""

import os

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

x = np.load("digits.npy")[:64].reshape(64, 1, 8, 8).astype(np.uint8)  # raw pixels 0..16
clients = (
    grpcclient.InferenceServerClient(os.environ.get("VAESERVE_TARGET", "localhost:50051")),
    httpclient.InferenceServerClient(os.environ.get("VAESERVE_HTTP", "localhost:8000")),
)
for client in clients:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    print(module.__name__, client.is_server_ready(), client.is_model_ready("digits"))
    tensor = module.InferInput("x", list(x.shape), "UINT8")
    tensor.set_data_from_numpy(x)  # raw bytes (gRPC) or the binary tensor extension (HTTP)
    wanted = [module.InferRequestedOutput(n) for n in ("log_px", "log_px_se", "is_anomaly")]
    result = client.infer("digits", [tensor], outputs=wanted, parameters={"k": 1000, "seed": 0})
    log_px = result.as_numpy("log_px")
    se, flags = result.as_numpy("log_px_se"), result.as_numpy("is_anomaly")
    print(log_px.shape, log_px[:3].round(3), se[:3].round(3), flags.sum())
