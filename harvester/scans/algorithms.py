"""The names of the point proposers a scan may ask for.

Apart from the proposers themselves (``harvester.scans.proposers``), whose TPE
needs Optuna: the user clients check ``--algorithm`` without the server's
libraries.
"""

ALGORITHMS = ("grid", "random", "tpe")
