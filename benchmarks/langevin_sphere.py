"""Langevin dynamics and iterate averaging on a planted direction on the sphere (arXiv 2603.06028 at
CPU size): recovery against sample size for projected gradient descent, Langevin and Langevin with
``torch.optim.swa_utils`` averaging. See ``steepest.bench.langevin_study`` and ``docs/averaging.md``.

    OMP_NUM_THREADS=1 python benchmarks/langevin_sphere.py [--quick] [--seeds 0,1,2] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys

import torch

from steepest.bench import langevin_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 16, two sample sizes (under a minute on one core)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", default="bench-out/langevin", help="output directory (default %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = langevin_study.run(args.out, quick=args.quick, seeds=[int(s) for s in args.seeds.split(",")])
    print(langevin_study.table(results))
    print(f"wrote {args.out}/report.md and {args.out}/results.json ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
