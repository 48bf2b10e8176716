"""``python -m paged_kv``: the command line (see `paged_kv.cli`)."""

import sys

from paged_kv.cli import main

sys.exit(main())
