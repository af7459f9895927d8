"""Device: a build directory -> a running target, and what it reports.

In: a build directory (``emit.builddir.BuildInfo``). Out: training runs, gradients checked against the host
reference, counted ticks, metered energy, profiles.
- ``target``: compile (make) and launch (host process, QEMU, qemu-aarch64), a ``Session`` on a pyserial URL;
- ``link``: the framed protocol (``docs/protocol.md``);
- ``harness``: batches, the training loop, inference, verify, energy per step;
- ``pio_upload``: PlatformIO's upload step for the QEMU boards;
- ``meter``: the PPK2 power meter; ``profile``: per node timing on the target.

May import: ``emit``, ``pipeline``, ``frontend``, ``schedule``, ``graph``, the ground floor.
"""
