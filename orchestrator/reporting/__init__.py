"""What a finished run or sweep says: ``summary`` (per-strategy rows with intervals, the
terminal tables), ``analysis`` (predictions beside measurements, leaderboards, reversal RTTs),
``plots``, ``report`` (the HTML page) and ``probe_report`` (a link probe's table).  Reads
results folders; never starts anything."""
