"""``python -m zmqws`` is ``zmqws``."""

import sys

from .cli import main

sys.exit(main())
