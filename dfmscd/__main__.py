"""``python -m dfmscd`` runs the command line, like the ``dfmscd`` console script."""

import sys

from dfmscd.cli import main

sys.exit(main())
