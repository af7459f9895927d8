import numpy as np
import pytest

from poetc.emit import cheaders, codegen
from poetc.graph import ops
from poetc.schedule.program import Op


@pytest.mark.parametrize("v", [0.1, -0.0, 1e-38, 3.4028235e38, 1 / 3, 123456.789, 1e-45, 2.5])
def test_float_literal_round_trips(v):
    lit = codegen.c_float(v)
    assert lit.endswith("f")
    assert np.float32(float(lit[:-1])) == np.float32(v)


def test_float_literal_rejects_nonfinite():
    for v in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            codegen.c_float(v)


@pytest.mark.parametrize("n", [0, 1, 16, 17, 33])
def test_float_bytes_are_the_exact_little_endian_patterns(n):
    v = np.array([0.1, -0.0, 1e-45, 3.4028235e38, 1 / 3, -2.5] * 6, np.float32)[:n]
    text = codegen.c_f32_bytes(v, per_line=16)
    lines = text.splitlines()
    assert all(ln.startswith('    "') and ln.endswith('"') for ln in lines)
    assert all(len(ln) <= 4 + 2 + 4 * 16 for ln in lines)
    raw = bytes.fromhex("".join(ln.strip().strip('"').replace("\\x", "") for ln in lines))
    assert raw == v.astype("<f4").tobytes()
    with pytest.raises(ValueError):
        codegen.c_f32_bytes(np.array([1.0, np.inf], np.float32))


def test_identifiers_and_comments():
    assert codegen.c_ident("t12") == "t12"
    for bad in ("1abc", "a-b", "", "x" * 64):
        with pytest.raises(ValueError):
            codegen.c_ident(bad)
    assert "*/" not in codegen.c_comment("evil */ name /* \n")


def test_struct_init():
    assert codegen.c_struct_init({"m": 3, "alpha": 0.5, "flag": True}) == ".m = 3u, .alpha = 0.5f, .flag = 1u"
    with pytest.raises(ValueError):
        codegen.c_value(-1)


def test_every_op_has_a_runtime_kernel_of_its_family():
    kinfo = cheaders.kernels()
    for op in ops.REGISTRY.values():
        assert op.kernel in kinfo, op.name
        assert kinfo[op.kernel].family == op.family, op.name
    ids = [k.id for k in kinfo.values()]
    assert len(ids) == len(set(ids))


def test_opcodes_agree_with_runtime():
    assert {op.name: op.value for op in Op} == cheaders.opcodes()


def test_statuses_parsed():
    st = cheaders.statuses()
    assert st[0][0] == "OK" and any(n == "ERR_PAGE_CHECKSUM" for n, _ in st.values())
