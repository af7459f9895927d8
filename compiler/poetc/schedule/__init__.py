"""Schedule: a training graph and a board -> a replayed schedule, its program and its arena plan.

In: ``TrainingGraph`` + ``Board`` (+ measured seconds per node). Out: ``Solution`` (``Program`` + ``Replay``)
and ``MemPlan``.
- ``cost``: per node seconds and joules, per tensor bytes and paging costs;
- ``problem``: the ``Problem`` every strategy sees (DAG, sizes, costs, budget, deadline);
- ``milp``: POET's MILP (HiGHS through highspy, other solvers through cvxpy), with ``Progress`` records;
  ``worker``: the solver process every solve runs in (killed past its time limit);
  ``baselines``: Chen's sqrt(n), the greedy; ``strategies``: all of them behind one call, each answer replayed;
- ``program``: POET's matrices (``Schedule``) and their lowering to a flat ``Program``;
- ``simulate``: the independent replay of a program; ``memplan``: arena offsets and the overlap check;
- ``sweep``: every strategy over a range of budgets; ``poetgraphs``: POET's benchmark graphs as ``Problem``s.

May import: ``graph``, the ground floor.
"""
