"""``python -m dcfmt`` runs the ``dcz`` command line."""

import sys

from .cli import main

sys.exit(main())
