"""What to run: the shipped and user YAML (network profiles, jobs, model pairs, prompt sets),
found by name or path and validated once, at load (``loading``); the job's schema and its
expansion into strategy runs (``job``); prompt sets and their answers (``datasets``)."""
