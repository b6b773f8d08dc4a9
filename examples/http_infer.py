"""The Open Inference Protocol over HTTP with the standard library only: docs/v2.md.

Needs a server with HTTP on (`vaeserve-server --http-port 8000`); $VAESERVE_HTTP overrides the address.
"""

import json
import os
import urllib.error
import urllib.request

from sklearn.datasets import load_digits

base = "http://" + os.environ.get("VAESERVE_HTTP", "localhost:8000")
x = load_digits().data[:2].astype(int)  # two raw images, pixels 0..16


def post(path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as err:
        return {"status": err.code, **json.load(err)}


with urllib.request.urlopen(base + "/v2/models/digits") as reply:
    metadata = json.load(reply)
inputs = [i["name"] for i in metadata["inputs"]]
print(metadata["name"], metadata["versions"], inputs, len(metadata["outputs"]), "outputs")
body = {
    "inputs": [{"name": "x", "datatype": "INT64", "shape": list(x.shape), "data": x.ravel().tolist()}],
    "parameters": {"k": 1000, "seed": 0},
    "outputs": [{"name": n} for n in ("log_px", "log_px_se", "anomaly_p_value", "is_anomaly")],
}
reply = post("/v2/models/digits/infer", body)
print(reply["parameters"])
for out in reply["outputs"]:
    print(out["name"], out["datatype"], out["data"])
wrong = {"name": "x", "datatype": "FP32", "shape": [1, 7], "data": [0] * 7}
print(post("/v2/models/digits/infer", {"inputs": [wrong]}))
