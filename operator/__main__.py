"""``python -m shoal.operator`` is the ``shoal`` CLI."""

import sys

from shoal.operator.cli import main

sys.exit(main())
