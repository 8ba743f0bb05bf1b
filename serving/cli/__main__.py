"""`python -m serving.cli`: the `anonlab` command."""

import sys

from serving.cli.main import main

sys.exit(main())
