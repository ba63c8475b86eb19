"""Side-by-side benchmarks (docs/design.md, section 9): floor 6, on ``host``, under the CLI (``p2pntk``); installed with the packages.

Benchmarks may import every floor below them, the host's operations included (the loopback swarm, rehearsals);
only the CLI imports them (``p2pntk bench TARGET``, in-process). They need only the runtime dependencies,
except ``kernels``, which measures against torch (the ``torch`` extra). Run one with
``python -m benchmarks TARGET`` or ``p2pntk bench TARGET``.
"""
