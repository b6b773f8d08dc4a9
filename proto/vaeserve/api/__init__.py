"""vaeserve's shared contracts: the gRPC API (``vaeserve.api.v1``), the tensor codec and the bundle manifest."""

from vaeserve.api.codec import TensorError, from_proto, to_proto
from vaeserve.api.manifest import Calibration, Manifest, Preprocessing

__all__ = ["Calibration", "Manifest", "Preprocessing", "TensorError", "from_proto", "to_proto"]
