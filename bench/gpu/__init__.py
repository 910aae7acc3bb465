"""GPU benchmark (issue 7), run as `python -m bench.gpu` (see __main__ for the command line).

`workloads` builds the models and the timed call, `methods` the table rows (ECAD and its peers),
`instruments` measures one row, `runner` runs the sections within their time budget, and `report`
writes the tables.
"""
