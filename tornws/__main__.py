"""``python -m tornws`` is the ``tornws`` command."""

import sys

from .cli import main

sys.exit(main())
