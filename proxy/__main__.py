"""`python -m proxy` is the same as the `threescale-proxy` command."""

import sys

from .cli import main

sys.exit(main())
