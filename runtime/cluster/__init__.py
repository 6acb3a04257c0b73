"""moelens on a Ray cluster: Ray Data pipelines whose workers are engine actors, each planned for its machine.

`job`: `runtime execute --workers N` (resumable, exactly-once output written by the driver); `worker`: the
`EngineWorker` actor class; `worker_plan`: the plan a worker runs; `processor`: the same as a Ray Data
processor for pipelines people already have; `report`: per-worker and fleet predicted against achieved;
`session`: connecting to (or starting) the cluster. Ray is imported only inside these functions.
"""
