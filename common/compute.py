"""What a board computes in and with, named once for every layer: the training dtypes (which are also
the wire's array dtypes, since every agent sends its ``train.dtype``) and the kernel backends
(``agent.kernels.make_kernels`` builds each one). The spec, the profiles, the wire, the transport and
the CLI read these tuples; adding a dtype or a backend starts here.
"""
from __future__ import annotations

DTYPES = ("float32", "float64")  # float32 on boards, float64 for exact comparisons; the first is the default
BACKENDS = ("numpy", "onnx")     # numpy: agent.model's hand-written backward; onnx: ONNX Runtime graphs
