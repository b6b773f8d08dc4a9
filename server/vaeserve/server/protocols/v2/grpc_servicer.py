"""inference.GRPCInferenceService: the Open Inference Protocol over gRPC, on the same port as VaeService.

Each method decodes the request, calls the data plane, encodes the reply; outputs travel as
raw_output_contents (what tritonclient reads). The server interceptor passes every call through the
request guard, as for VaeService: the same request ids, admission, status codes, logs and metrics.
"""

from __future__ import annotations

import time

import numpy as np

from vaeserve.api.v2 import grpc_predict_v2_pb2 as v2
from vaeserve.api.v2 import grpc_predict_v2_pb2_grpc as v2_grpc
from vaeserve.server.boundary.guard import Guard
from vaeserve.server.boundary.interceptor import Context
from vaeserve.server.errors import InvalidArgument
from vaeserve.server.protocols.v2.dataplane import DataPlane, Param, TensorSpec
from vaeserve.server.protocols.v2.tensors import DATATYPES, datatype_of, from_contents, from_raw, to_raw

__all__ = ["InferenceServicer"]


def _param(value: v2.InferParameter) -> Param:
    choice = value.WhichOneof("parameter_choice")
    if choice is None:
        raise InvalidArgument("a request parameter has no value")
    result: Param = getattr(value, choice)
    return result


def _to_param(value: Param) -> v2.InferParameter:
    if isinstance(value, bool):
        return v2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return v2.InferParameter(int64_param=value) if value < 2**63 else v2.InferParameter(uint64_param=value)
    if isinstance(value, float):
        return v2.InferParameter(double_param=value)
    return v2.InferParameter(string_param=value)


def _inputs(request: v2.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            array = from_raw(tensor.name, tensor.datatype, shape, raw[i], DATATYPES)
        else:
            array = from_contents(tensor.name, tensor.datatype, shape, tensor.contents, DATATYPES)
        if tensor.name in inputs:
            raise InvalidArgument(f"input {tensor.name} is given twice")
        inputs[tensor.name] = array
    return inputs


def _metadata(spec: TensorSpec) -> v2.ModelMetadataResponse.TensorMetadata:
    return v2.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, guard: Guard) -> None:
        self.plane = plane
        self.guard = guard

    async def ServerLive(self, request: v2.ServerLiveRequest, context: Context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: v2.ServerReadyRequest, context: Context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.plane.server_ready())

    async def ModelReady(self, request: v2.ModelReadyRequest, context: Context) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: v2.ServerMetadataRequest, context: Context) -> v2.ServerMetadataResponse:
        name, version, extensions = self.plane.server_metadata()
        return v2.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context: Context) -> v2.ModelMetadataResponse:
        name, versions, inputs, outputs = self.plane.model_metadata(request.name, request.version)
        return v2.ModelMetadataResponse(
            name=name,
            versions=versions,
            platform="vaeserve",
            inputs=[_metadata(s) for s in inputs],
            outputs=[_metadata(s) for s in outputs],
        )

    async def ModelInfer(self, request: v2.ModelInferRequest, context: Context) -> v2.ModelInferResponse:
        remaining = context.time_remaining()
        inferred = await self.plane.infer(
            request.model_name,
            request.model_version,
            _inputs(request),
            {key: _param(value) for key, value in request.parameters.items()},
            [o.name for o in request.outputs] or None,
            self.guard.request_of(context),
            None if remaining is None else time.monotonic() + remaining,
        )
        reply = v2.ModelInferResponse(
            model_name=request.model_name, model_version=inferred.model.version, id=request.id
        )
        for key, value in inferred.parameters.items():
            reply.parameters[key].CopyFrom(_to_param(value))
        for name, array in inferred.outputs:
            reply.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            reply.raw_output_contents.append(to_raw(array))
        return reply
