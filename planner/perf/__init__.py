"""The performance model: seconds and bytes per module for a spec on a profile, given batch sizes and budgets."""
