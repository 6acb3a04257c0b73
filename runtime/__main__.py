"""`python -m runtime` runs the `runtime` command (see runtime.cli)."""

from __future__ import annotations

from runtime.cli import main

raise SystemExit(main())
