"""Side-by-side benchmarks (docs/design.md, section 9): the top layer, above ``predictor``, installed with it.

Benchmarks may import every package; no package imports them. They need only the runtime dependencies,
except ``kernels``, which measures against torch (the ``torch`` extra). Run one with
``python -m benchmarks TARGET`` (what ``p2pntk bench TARGET`` does, in a subprocess).
"""
