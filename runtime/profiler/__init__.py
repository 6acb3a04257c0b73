"""The profiler: measures this machine into a `planner.hardware.profile.HardwareProfile` using the runtime's own kernels.

`measure_profile(quick=...)` (in `runtime.profiler.measure`) runs every measurement and returns the profile;
`runtime profile [--out PATH] [--quick]` (runtime/commands/profile.py) saves it in the user dir (planner.locations).
Datasheet profiles for machines we cannot measure come from `runtime.profiler.datasheet`.
"""
