"""Host cost of the scheduling policy's sort keys: microseconds per scheduling round for N SLO
requests (each with a TPOT promise and a deadline: the slack policy's costliest keys), as the
scheduler computes them once a step. No model: a scheduler on a fixed cost model.

    python benchmarks/policy_keys.py [--seqs 256] [--policy slack]
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/policy_keys.py   # another build
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from kairos.sched.cost_model import CostModel  # noqa: E402
from kairos.wire.slo import SLO  # noqa: E402
from sched_helpers import Sim  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, default=256)
    ap.add_argument("--policy", default="slack")
    args = ap.parse_args()
    sim = Sim(policy=args.policy, num_blocks=8192, max_num_seqs=args.seqs, budget=512)
    sim.cost = sim.sched.cost = CostModel((0.008, 0.17, 0.02, 0.0062, 0.025))  # (this CPU's, slo_sim.TRUTH)
    seqs = [sim.add(f"r{i}", 100, max_tokens=50, slo=SLO(tpot_ms=100, deadline_ms=20_000)) for i in range(args.seqs)]
    for _ in range(3):  # some running, some mid-prompt, some waiting
        sim.step()
    ctx = sim.sched.context()
    n, best = 100, float("inf")
    for _ in range(5):
        best = min(best, timeit.timeit(lambda: [sim.sched.policy(s, ctx) for s in seqs], number=n) / n)
    print(f"{args.policy} keys of {args.seqs} SLO requests: {best * 1e6:.0f} us per round (best of 5 x {n})")


if __name__ == "__main__":
    main()
