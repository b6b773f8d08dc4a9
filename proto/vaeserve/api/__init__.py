"""vaeserve's shared contracts: the gRPC API (``vaeserve.api.v1``), the tensor codec and the bundle manifest.

Beside them, what every distribution shares without depending on another: the bundle writers
(``vaeserve.api.bundle``), the data-file readers (``vaeserve.api.datafiles``) and terminal tables
(``vaeserve.api.tables``).
"""

from vaeserve.api.codec import TensorError, from_proto, to_proto
from vaeserve.api.manifest import Calibration, Manifest, Preprocessing

__all__ = ["Calibration", "Manifest", "Preprocessing", "TensorError", "from_proto", "to_proto"]
