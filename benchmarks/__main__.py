"""``python -m benchmarks``: every benchmark, Markdown tables on stdout (see ``run_all``)."""

from __future__ import annotations

import sys

from benchmarks.run_all import main

sys.exit(main())
