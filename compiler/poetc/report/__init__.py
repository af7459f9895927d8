"""Report: figures and pages for people.

In: problems, solutions, sweeps, build directories and their runs. Out: PNG plots, the HTML report.
- ``plots``: matplotlib figures (schedule grid, RAM timeline, energy vs budget);
- ``page``: ``poetc report``, one HTML page (``templates/report.html.j2``) with the figures embedded.
- ``units``: one engineering unit per axis or column (mJ, KiB), and the report's small formatters.

May import: ``device``, ``emit``, ``pipeline``, ``frontend``, ``schedule``, ``graph``, the ground floor.
"""
