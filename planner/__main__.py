"""`python -m planner`: the same as the `planner` console script (planner.cli)."""

from __future__ import annotations

import sys

from planner.cli import main

sys.exit(main())
