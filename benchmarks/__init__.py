"""Side-by-side benchmarks (docs/design.md, section 9): a dev-only layer of the source checkout, above ``predictor``.

Benchmarks may import every package; no package imports them. Run one with ``python -m benchmarks TARGET``
(what ``p2pntk bench TARGET`` does, in a subprocess).
"""
