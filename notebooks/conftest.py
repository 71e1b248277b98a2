"""nbval runs every notebook in quick mode: the same code, smaller sizes and fewer steps."""

import os

os.environ["WIKIGPT_QUICK"] = "1"
