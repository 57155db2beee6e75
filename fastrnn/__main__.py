"""`python -m fastrnn`: the same as the `fastrnn` command (fastrnn.cli)."""

import sys

from fastrnn.cli import main

sys.exit(main())
