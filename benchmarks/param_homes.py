"""Parameters in the schedule: what it buys, per zoo model and board.

For each model and board, prints
  1. the smallest RAM budget that trains with every parameter fixed in RAM (``--params ram``, poetc before
     parameters were scheduled) and with homes chosen by the schedule (``--params auto``);
  2. energy per step at 100%, 50% and 25% of the store-all peak (everything in RAM, nothing recomputed) for POET
     and every baseline, and the share of that energy spent loading and writing back parameters.
Budgets are whole-RAM budgets (parameters, buffers, stack and arena), as ``poetc build --ram`` takes them.

    python benchmarks/param_homes.py [--models mlp,digits16-mlp] [--boards nrf52840,mkr1000] [--time-limit 20]
"""

from __future__ import annotations

import argparse
import re
import time

from poetc import boards, frontend, pipeline
from poetc.errors import PoetcError
from poetc.fmt import joules, nbytes, table
from poetc.frontend import zoo
from poetc.schedule import strategies

MODELS = ("digits-mlp", "digits16-mlp", "digits-deep-mlp", "digits-cnn", "mlp", "lenet")
BOARDS = ("nrf52840", "mkr1000")
SHARES = (1.0, 0.5, 0.25)


def _no_fit(e: PoetcError) -> str:
    m = re.search(r"smallest budget that could fit is (\d+) bytes", str(e))
    return f"no fit (needs at least {nbytes(int(m.group(1)))})" if m else f"no fit ({e})"


def smallest(model, board, params: str, opt: strategies.SolveOptions) -> str:
    try:
        pl = pipeline.plan(model, board, params=params)
    except PoetcError as e:
        return _no_fit(e)
    b, _how = strategies.smallest_budget(pl.problem, "poet", opt)
    if b < 0:
        return "none"
    total = pl.fixed.fixed + b
    return nbytes(total) + ("" if total <= board.ram_bytes else " (over the board)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="zoo models, comma-separated")
    ap.add_argument("--boards", default=",".join(BOARDS), help="boards, comma-separated")
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds per MILP solve (default 20)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: each zoo model's own)")
    a = ap.parse_args()
    opt = strategies.SolveOptions(time_limit_s=a.time_limit)
    for bname in a.boards.split(","):
        board = boards.load(bname)
        size_rows, energy_rows = [], []
        for name in a.models.split(","):
            t0 = time.perf_counter()
            model = frontend.load(name, batch=a.batch or zoo.default_batch(name))
            size_rows.append([name, smallest(model, board, "ram", opt), smallest(model, board, "auto", opt)])
            try:
                pl = pipeline.plan(model, board, ram=board.ram_bytes, params="auto")
            except PoetcError as e:
                energy_rows.append([name, _no_fit(e), *[""] * len(strategies.NAMES)])
                continue
            p, fixed = pl.problem, pl.fixed.fixed
            peak = fixed + strategies.store_all_peak(p)
            for share in SHARES:
                total = int(peak * share)
                q = p.with_budget(total - fixed)
                row: list[object] = [name, f"{100 * share:.0f}% = {nbytes(total)}"]
                if total > board.ram_bytes:
                    energy_rows.append([*row, "over the board's RAM", *[""] * (len(strategies.NAMES) - 1)])
                    continue
                for s in strategies.NAMES:
                    sol = strategies.run(s, q, opt) if q.budget >= q.min_budget() else None
                    if sol is None or not sol.ok:
                        row.append("-")
                        continue
                    r = sol.replay
                    share_params = r.param_paging_j / r.energy_j if r.energy_j else 0.0
                    row.append(f"{joules(r.energy_j)} ({100 * share_params:.0f}%)")
                energy_rows.append(row)
            print(f"  {name} on {bname}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"\n{bname}: smallest RAM budget that trains (POET)")
        print(table(["model", "parameters in RAM", "parameters scheduled"], size_rows, "lll"))
        print(
            f"\n{bname}: energy per step at shares of the store-all peak (in brackets: the share spent loading "
            f"and writing back parameters; '-': no schedule fits)"
        )
        print(table(["model", "budget", *strategies.NAMES], energy_rows, "l" * (2 + len(strategies.NAMES))))


if __name__ == "__main__":
    main()
