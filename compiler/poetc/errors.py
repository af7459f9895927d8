"""One exception type for every user-facing error.

The CLI prints ``poetc: error: <message>`` on one line and exits with status 2; no traceback. The message
names what is wrong and where (file, node, field).
"""


class PoetcError(Exception):
    """A user-facing error: bad input, unsupported model, infeasible budget, failed build or run."""

    exit_code = 2


class TargetError(PoetcError):
    """The target misbehaved: it crashed, hung, faulted or broke the protocol."""

    exit_code = 3
