"""The shipped configuration, as package data: network profiles (``profiles/``, the seed grid
under ``profiles/grid/``), jobs (``jobs/``), model pairs and the tiny pair's weights
(``models/``), prompt sets (``prompts/``).  No code: ``orchestrator.config.loading`` finds
these files through ``importlib.resources``, the same way from a checkout and from a wheel."""
