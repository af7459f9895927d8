"""Graph: the IR and the training graph built from it.

In: ``Model`` (a forward ``Graph`` with parameter values). Out: ``TrainingGraph`` (forward, loss, backward,
optimizer updates) and its float64 numpy reference.
- ``ir``: frozen tensors, nodes, graphs, and the ``Model`` the frontend produces;
- ``autodiff``: forward graph -> training graph, from the ops' gradient rules;
- ``reference``: a training step and inference in numpy float64 (the check for everything the device computes);
- ``ops/``: one file per op family (shape, FLOPs, reference, C params, gradient rule).

May import: the ground floor only.
"""
