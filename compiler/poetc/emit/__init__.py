"""Emit: a compiled model -> a build directory of C sources, Makefile, PlatformIO project and manifest.

In: ``pipeline.Compiled`` (training graph, program, memory plan). Out: ``model.c``/``model.h`` from the
Jinja2 templates, a copy of the runtime and port, ``poetc.json``, ``schedule.json``.
- ``codegen``: the tables of ``model.c`` (tensors, kernel params, nodes, programs, initial values);
- ``cheaders``: the facts the C headers hold (kernel ids, opcodes, status codes), parsed from their X-macros;
- ``builddir``: the build directory, written all or nothing, and reading it back (``BuildInfo``).

May import: ``pipeline``, ``frontend``, ``schedule``, ``graph``, the ground floor.
"""
