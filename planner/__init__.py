"""moelens planner: torch-free model specs, hardware profiles, performance model and solver.

Public entry points re-exported here: `ModelSpec`, `load_spec`, `list_specs` (planner.specs.spec) and
`UserError` (planner.errors). This package never imports torch.
"""

from __future__ import annotations

from planner.errors import UserError
from planner.specs.spec import ModelSpec, list_specs, load_spec

__all__ = ["ModelSpec", "UserError", "list_specs", "load_spec"]
