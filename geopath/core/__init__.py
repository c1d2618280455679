"""The mathematics: metric operators, solvers, targets and the path engine (torch only, no file I/O)."""
