"""`python -m cityclf_core` runs the `cityclf` command."""

import sys

from .cli import main

sys.exit(main())
