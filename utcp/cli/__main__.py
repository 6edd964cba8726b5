"""``python -m utcp.cli COMMAND ...``."""

import sys

from . import main

sys.exit(main())
