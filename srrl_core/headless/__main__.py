"""``python -m srrl_core.headless ...``: the headless client's command line."""

import sys

from .cli import main

sys.exit(main())
