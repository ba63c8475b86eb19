"""``python -m p2pntk`` is the ``p2pntk`` command line."""
import sys

from p2pntk.cli import main

sys.exit(main())
