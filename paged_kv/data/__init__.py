"""Package data: the shipped request traces (see README.md here for provenance and licences).

Read them through `paged_kv.sim.traces`, which opens them with `importlib.resources`.
"""
