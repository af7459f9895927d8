from pathlib import Path

import pytest

from poetc import boards
from poetc.errors import PoetcError


def test_every_board_file_loads_with_sources():
    bs = boards.all_boards()
    names = {b.name for b in bs}
    assert {"host", "nrf52840", "mkr1000"} <= names
    for b in bs:
        assert b.ram_bytes > 0 and b.flop_per_s > 0 and b.flop_per_j > 0
        # every cost constant says where it comes from
        for f in (
            "flop_per_s",
            "flop_per_j",
            "page_in_latency_s",
            "page_in_bytes_per_s",
            "page_out_latency_s",
            "page_out_bytes_per_s",
            "memory_power_w",
        ):
            assert f in b.sources, f"{b.name}: no source for {f}"


def test_poet_constants():
    nrf = boards.load("nrf52840")
    mkr = boards.load("mkr1000")
    assert nrf.flop_per_s == pytest.approx(6.37e6) and nrf.flop_per_j == pytest.approx(5.80e8)
    assert mkr.flop_per_s == pytest.approx(1.667e5) and mkr.flop_per_j == pytest.approx(2.525e6)
    assert nrf.ram_bytes == 256 * 1024 and mkr.ram_bytes == 32 * 1024
    assert mkr.page_in_bytes_per_s == 4_616_510 and mkr.page_out_latency_s == pytest.approx(0.113e-3)


def test_board_is_frozen():
    b = boards.load("host")
    with pytest.raises(AttributeError):
        b.ram_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.replace("ram_bytes = 262_144", 'ram_bytes = "lots"'), "field 'ram_bytes' must be"),
        (lambda s: s.replace("flop_per_s = 6.37e6\n", ""), "missing field 'flop_per_s'"),
        (lambda s: "bogus_field = 3\n" + s, "unknown field 'bogus_field'"),
        (lambda s: s.replace('storage = "sd"', 'storage = "tape"'), "field 'storage' must be one of"),
        (lambda s: s.replace("[sources]", '[sources]\nnot_a_field = "x"'), "[sources] names unknown field"),
        (lambda s: s.replace("clock_hz = 64_000_000", "clock_hz = = 1"), "not valid TOML"),
    ],
)
def test_bad_board_file_names_file_and_field(tmp_path: Path, edit, message):
    src = (boards.boards_dir() / "nrf52840.toml").read_text()
    p = tmp_path / "nrf52840.toml"
    p.write_text(edit(src))
    with pytest.raises(PoetcError) as e:
        boards.load_file(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_unknown_board():
    with pytest.raises(PoetcError, match=r"unknown board 'nope'.*host"):
        boards.load("nope")
