"""How a run happens: ``run`` (one job over one profile: agents started, queries driven, rows
written), ``sweep`` (a job over many network cells, resumable), ``crossvalidate`` (the same
sweep in sim and on the kernel, judged), ``launch`` (agents in namespaces, on loopback or
beside the router VM), ``vm`` (qemu: the router VM and ``orchestrator vm``), ``doctor``
(what this host can do, which mode a run uses)."""
