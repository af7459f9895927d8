"""One CLI vocabulary: every option of every command has help and shows its default, shared options mean the
same thing everywhere, and choices are checked while the command line is parsed, before any model loads."""

from __future__ import annotations

import argparse

import pytest

from poetc import boards, cli
from poetc.errors import PoetcError
from poetc.schedule import strategies


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.make_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _options(s: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in s._actions if not isinstance(a, argparse._HelpAction)]


def test_every_command_is_walked():
    assert set(_subparsers()) == {
        "boards", "build", "solve", "sweep", "train", "verify", "profile", "report", "flash", "export", "demo",
        "fleet",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(_subparsers()))
def test_every_option_has_help_and_shows_its_default(name):
    s = _subparsers()[name]
    text = "".join(s.format_help().split())  # argparse wraps lines (and at hyphens)
    fmt = s._get_formatter()
    for a in _options(s):
        what = f"{name} {'/'.join(a.option_strings) or a.dest}"
        assert a.help and len(a.help) > 10, f"{what}: no help"
        shown = _flat(fmt._expand_help(a))
        assert "".join(shown.split()) in text, f"{what}: its help is not in --help"
        if not a.option_strings or a.required:
            continue
        if a.default is not None and a.default is not False:  # 0 == False, but 0 is a default to show
            assert f"(default: {a.default})" in shown, f"{what}: default {a.default!r} not shown: {shown}"
        elif a.default is None:
            # worked out later (from the board, the model, the build): the help says what it is
            assert "default" in shown, f"{what}: no default described: {shown}"


def test_shared_options_mean_the_same_everywhere():
    subs = _subparsers()
    by_opt: dict[str, dict[str, argparse.Action]] = {}
    for name, s in subs.items():
        for a in _options(s):
            for o in a.option_strings:
                by_opt.setdefault(o, {})[name] = a
    # --board: the board files' names (or a board file) on every command that takes one
    for name, a in by_opt["--board"].items():
        if name == "fleet":  # a list, one board per client (not required with --connect), each name checked
            assert a.metavar == "B[,B2...]" and a.type is cli._boards_arg
            continue
        # solve: not with --graph FILE.json (cmd_solve requires it with a MODEL)
        assert (a.required or name == "solve") and a.metavar == "{" + ",".join(boards.names()) + "}", name
    # --strategy: the strategies' names; --out: always a directory; --port on every command that runs a board
    for a in by_opt["--strategy"].values():
        assert a.metavar == "{" + ",".join(strategies.NAMES) + "}"
    assert {n for n, a in by_opt["--out"].items()} == {"build", "sweep", "profile", "demo", "fleet"}
    assert all(a.metavar == "DIR" for a in by_opt["--out"].values())
    assert {"train", "verify", "profile", "flash"} <= set(by_opt["--port"])
    # the scheduling options of build are sweep's too (sweep: --strategies, a list, in place of --strategy)
    on_device = {"--on-device", "--data", "--on-device-steps", "--checkpoint-every", "--lr", "--seed"}
    build = {o for a in _options(subs["build"]) for o in a.option_strings} - {
        "--out",
        "--no-compile",
        *on_device,
    }
    sweep = {o for a in _options(subs["sweep"]) for o in a.option_strings}
    assert build - sweep == {"--strategy"} and "--strategies" in sweep
    for o in ("--deadline", "--profile", "--ram", "--time-limit", "--solver", "--gap"):
        assert {"build", "solve", "sweep"} <= set(by_opt[o]), o
    for o in ("--time-limit", "--gap", "--solver", "--deadline", "--profile"):
        assert len({by_opt[o][n].help for n in ("build", "solve", "sweep")}) == 1, o


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "no-such-model.onnx", "--board", "pdp11"], "unknown board 'pdp11'"),
        (
            ["solve", "no-such-model.onnx", "--board", "host", "--strategy", "magic"],
            "unknown strategy 'magic'",
        ),
        (
            ["sweep", "no-such-model.onnx", "--board", "host", "--strategies", "poet,nope"],
            "unknown strategy 'nope'",
        ),
        (["build", "no-such-model.onnx", "--board", "host", "--ram", "lots"], "bad byte size 'lots'"),
        (["solve", "no-such-model.onnx", "--board", "host", "--deadline", "soon"], "bad deadline 'soon'"),
        (["profile", "no-such-model.onnx", "--board", "host", "--strategy", "x"], "unknown strategy 'x'"),
        (["fleet", "no-such-model.onnx", "--board", "qemu-m4,pdp11"], "unknown board 'pdp11'"),
        (
            ["fleet", "no-such-model.onnx", "--board", "host", "--strategy", "fedavg"],
            "unknown strategy 'fedavg'",
        ),
    ],
)
def test_choices_are_checked_before_any_model_loads(argv, message):
    with pytest.raises(PoetcError) as e:
        cli.make_parser().parse_args(argv)  # the model file does not exist: parsing alone must fail
    assert message in str(e.value) and "\n" not in str(e.value)


def test_default_out_directories_name_model_and_board():
    b = boards.load("qemu-m4")
    assert str(cli._default_out("build", "digits-mlp", b)) == "build/digits-mlp-qemu-m4"
    assert str(cli._default_out("sweep", "models/net.onnx", b)) == "sweep/net-qemu-m4"
