"""``python -m predictor`` is the ``p2pntk`` command line."""
import sys

from predictor.cli import main

sys.exit(main())
