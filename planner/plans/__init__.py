"""Solving and plans: the workload, the solver over the performance model, the plan file, sweeps and explain."""
