"""The ``spd-covariance`` benchmark: SPD covariance classification with no batch norm and with LEM, AIM, BW
and GBW Riemannian batch norms (and geoopt's RiemannianAdam as the peer), as the condition number grows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spd_covariance.py [--quick] [--out bench-out/spd-covariance]
        [--kappas 10,1e4,1e7] [--seeds 0,1] [--epochs 10] [--no-peer]

Writes ``report.md`` and ``results.json`` into ``--out`` (see :mod:`steepest.bench.spd_covariance`).
The full run takes ~10 minutes on one core, ``--quick`` ~30 s.
"""
from __future__ import annotations

import argparse

import torch

from steepest.bench.spd_covariance import run


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smoke configuration (~30 s)")
    parser.add_argument("--out", default="bench-out/spd-covariance", help="output directory")
    parser.add_argument("--kappas", type=_floats, default=None, help="condition numbers of the congruence")
    parser.add_argument("--seeds", type=_ints, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--no-peer", action="store_true", help="skip the geoopt peer")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(args.out, quick=args.quick, kappas=args.kappas, seeds=args.seeds, epochs=args.epochs,
        peer=False if args.no_peer else None)
    print(open(f"{args.out}/report.md", encoding="utf-8").read())


if __name__ == "__main__":
    main()
