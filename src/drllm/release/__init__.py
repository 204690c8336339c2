"""Routers leaving and entering the pipeline: the release card (rules/report.smk: release_routers) and routers
imported from a folder or the hub (rules/train.smk: import_routers)."""
