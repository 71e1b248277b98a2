"""`python -m wikigpt_lib` is the `wikigpt` command."""

import sys

from wikigpt_lib.cli import main

sys.exit(main())
