"""The ``p2pntk`` command line, the roof of the house: ``cli.py`` and one module per command in
``commands/``. It imports every floor below, the benchmarks included, and nothing imports it.
"""
