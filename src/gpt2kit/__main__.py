"""`python -m gpt2kit` is the same as the `gpt2kit` command."""

import sys

from gpt2kit.cli.__main__ import main

sys.exit(main())
