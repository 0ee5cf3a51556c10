"""``spd-covariance``: SPD covariance classification with Riemannian batch norms, as the condition number grows.

A synthetic task with ill-conditioned classes (``seed-systems.md`` section 1.4, item 3, adapted so the class
information does not depend on the condition number):

- class ``c`` has the covariance ``Sigma_c = R_c diag(s) R_c^T`` with a mild spectrum ``s`` (condition number
  ``base_cond``) and ``R_c = expm(omega c S)`` for a fixed random skew ``S`` (unit Frobenius norm);
- a sample is the covariance of ``T`` Gaussian draws, ``C = K (Z Z^T / T) K`` with ``Z ~ N(0, Sigma_c)``,
  congruenced by one fixed SPD ``K = Q diag(kappa^{(i/(n-1) - 1/2)/2}) Q^T`` (``Q`` a fixed random rotation),
  so the data's condition number is about ``kappa * base_cond`` while the classes stay exactly as separable
  (``K`` is invertible and the same for every sample): any loss of accuracy as ``kappa`` grows is
  numerical or optimization conditioning, the effect GBWBN (arXiv 2504.00660) targets.

Model: ``BiMap(n, n1) -> [norm] -> ReEig -> BiMap(n1, n2) -> [norm] -> LogEig -> Linear``, float64, with
``norm`` one of: none, :class:`steepest.nn.SPDBatchNorm` under LEM, AIM, BW or GBW. Training:
``steepest.for_model(model, preset, lr=lr, adamw_lr=adamw_lr)`` (BiMap weights retracted onto Stiefel,
the batch norms' ``M`` and bias projected onto the SPD cone), and as the peer geoopt's ``RiemannianAdam``
on the GBW model with the BiMap weights on geoopt's ``Stiefel`` and ``M``/bias on its
``SymmetricPositiveDefinite`` manifold (skipped when geoopt is not installed).

Fairness: for a seed, every model starts from the same BiMap and Linear weights (the batch norms start at
``I``) and sees the same batches; each variant runs an lr grid (multipliers of its base lrs) with every seed;
the multiplier with the best mean validation accuracy is picked per (variant, kappa) and its test accuracy
reported (mean, min and max over seeds). A run whose loss becomes non-finite stops and scores chance.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["SPDCovarianceConfig", "NORMALIZERS", "make_data", "build_model", "run"]

#: the normalizers compared (``none``: no batch norm)
NORMALIZERS: tuple[str, ...] = ("none", "lem", "aim", "bw", "gbw")
#: the peer's row name
PEER = "gbw + geoopt RiemannianAdam"
F64 = torch.float64


@dataclass
class SPDCovarianceConfig:
    """One run's settings (defaults: the full run; :meth:`quick` for the smoke run)."""

    kappas: tuple[float, ...] = (1e1, 1e4, 1e7)
    seeds: tuple[int, ...] = (0, 1)
    lr_multipliers: tuple[float, ...] = (0.3, 1.0, 3.0)
    normalizers: tuple[str, ...] = NORMALIZERS
    peer: bool = True
    n: int = 12
    hidden: tuple[int, int] = (8, 6)
    classes: int = 4
    train_per_class: int = 64
    val_per_class: int = 32
    test_per_class: int = 64
    samples: int = 24            # T, draws per covariance
    omega: float = 0.8           # rotation between consecutive classes
    base_cond: float = 10.0
    epochs: int = 10
    batch_size: int = 32
    preset: str = "muon"
    lr: float = 0.05             # the preset's lr (BiMap weights)
    adamw_lr: float = 0.01       # the AdamW lr of the other parameters
    peer_lr: float = 0.03        # geoopt RiemannianAdam's lr (every parameter)
    bn_iters: int = 1            # barycenter iterations per batch
    data_seed: int = 1234

    @classmethod
    def quick(cls) -> "SPDCovarianceConfig":
        return cls(kappas=(1e1, 1e6), seeds=(0,), lr_multipliers=(1.0,), n=8, hidden=(6, 4),
                   train_per_class=32, val_per_class=16, test_per_class=32, samples=16, epochs=4)


# -- data ----------------------------------------------------------------------------------------------------
def _random_rotation(n: int, gen: torch.Generator) -> Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    return Q * torch.sign(torch.diagonal(R))


def make_data(cfg: SPDCovarianceConfig, kappa: float) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"train"|"val"|"test": (X, y)}``, ``X`` of shape ``(N, n, n)`` float64 SPD, ``y`` class indices.
    The class covariances and the samples' noise depend on ``data_seed`` only (not on ``kappa``): the
    datasets of two ``kappa`` differ only by the fixed congruence ``K``."""
    n, gen = cfg.n, torch.Generator().manual_seed(cfg.data_seed)
    S = torch.randn(n, n, generator=gen, dtype=F64)
    S = (S - S.T) / torch.linalg.matrix_norm(S - S.T)
    s = torch.logspace(0, math.log10(cfg.base_cond), n, dtype=F64)
    sigmas = []
    for c in range(cfg.classes):
        R = torch.linalg.matrix_exp(cfg.omega * c * S)
        sigmas.append((R * s) @ R.T)
    Q = _random_rotation(n, gen)
    k = torch.tensor([kappa ** ((i / (n - 1) - 0.5) / 2) for i in range(n)], dtype=F64)
    K = (Q * k) @ Q.T
    out = {}
    for split, per_class in (("train", cfg.train_per_class), ("val", cfg.val_per_class),
                             ("test", cfg.test_per_class)):
        xs, ys = [], []
        for c, sigma in enumerate(sigmas):
            L = torch.linalg.cholesky(sigma)
            Z = L @ torch.randn(per_class, n, cfg.samples, generator=gen, dtype=F64)
            C = Z @ Z.mT / cfg.samples
            xs.append(K @ C @ K)
            ys.append(torch.full((per_class,), c))
        X = torch.cat(xs)
        out[split] = ((X + X.mT) / 2, torch.cat(ys))
    return out


# -- models and training -----------------------------------------------------------------------------------------
def build_model(cfg: SPDCovarianceConfig, normalizer: str, seed: int) -> nn.Sequential:
    """The SPD network; the BiMap and Linear weights depend on ``seed`` only (not on the normalizer)."""
    from ..nn import BiMap, LogEig, ReEig, SPDBatchNorm

    if normalizer not in NORMALIZERS:
        raise ValueError(f"Unknown normalizer {normalizer!r}; expected one of: {', '.join(NORMALIZERS)}")
    gen = torch.Generator().manual_seed(seed)
    n1, n2 = cfg.hidden
    first, second = BiMap(cfg.n, n1, generator=gen, dtype=F64), BiMap(n1, n2, generator=gen, dtype=F64)
    torch.manual_seed(seed)
    head = nn.Linear(n2 * (n2 + 1) // 2, cfg.classes, dtype=F64)

    def norm(dim: int) -> list[nn.Module]:
        return [] if normalizer == "none" else [SPDBatchNorm(dim, normalizer, iters=cfg.bn_iters, dtype=F64)]

    return nn.Sequential(first, *norm(n1), ReEig(), second, *norm(n2), LogEig(), head)


def _geoopt_optimizer(model: nn.Module, lr: float):
    """geoopt's RiemannianAdam with the BiMap weights on ``Stiefel`` and SPD parameters on
    ``SymmetricPositiveDefinite`` (replaced in place by ``ManifoldParameter``s); ``None`` without geoopt."""
    try:
        import geoopt
    except ImportError:
        return None
    from ..nn import BiMap, SPDBatchNorm

    for module in model.modules():
        if isinstance(module, BiMap):
            module.weight = geoopt.ManifoldParameter(module.weight.detach().clone(), manifold=geoopt.Stiefel())
        elif isinstance(module, SPDBatchNorm):
            for name in ("M", "bias"):
                p = getattr(module, name)
                if p is not None:
                    setattr(module, name, geoopt.ManifoldParameter(
                        p.detach().clone(), manifold=geoopt.SymmetricPositiveDefinite()))
    return geoopt.optim.RiemannianAdam(model.parameters(), lr=lr)


def geoopt_available() -> bool:
    try:
        import geoopt  # noqa: F401
    except ImportError:
        return False
    return True


def _accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(X)
    model.train()
    if not torch.isfinite(logits).all():
        return float("nan")
    return float((logits.argmax(1) == y).double().mean())


def train_one(cfg: SPDCovarianceConfig, data: dict, variant: str, multiplier: float, seed: int) -> dict[str, Any]:
    """Train one (variant, lr multiplier, seed); ``variant`` is a normalizer or :data:`PEER`."""
    import steepest

    peer = variant == PEER
    model = build_model(cfg, "gbw" if peer else variant, seed)
    if peer:
        opt = _geoopt_optimizer(model, cfg.peer_lr * multiplier)
    else:
        opt = steepest.for_model(model, cfg.preset, lr=cfg.lr * multiplier, adamw_lr=cfg.adamw_lr * multiplier)
    X, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    start, diverged, steps, loss = time.perf_counter(), False, 0, float("nan")
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - cfg.batch_size + 1, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            try:
                out = nn.functional.cross_entropy(model(X[idx]), y[idx])
            except torch.linalg.LinAlgError:
                diverged = True
                break
            if not torch.isfinite(out):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            out.backward()
            opt.step()
            loss, steps = float(out.detach()), steps + 1
        if diverged:
            break
    chance = 1.0 / cfg.classes
    try:
        val, test = _accuracy(model, *data["val"]), _accuracy(model, *data["test"])
    except torch.linalg.LinAlgError:
        val = test = float("nan")
    if diverged or not (math.isfinite(val) and math.isfinite(test)):
        diverged, val, test = True, chance, chance
    return {"variant": variant, "lr_multiplier": multiplier, "seed": seed, "val_acc": val, "test_acc": test,
            "train_loss": loss, "steps": steps, "diverged": diverged, "seconds": time.perf_counter() - start}


# -- the run --------------------------------------------------------------------------------------------------------
def _condition_numbers(X: Tensor) -> dict[str, float]:
    l = torch.linalg.eigvalsh(X)
    cond = (l[:, -1] / l[:, 0]).sort().values
    return {"median": float(cond[len(cond) // 2]), "max": float(cond[-1])}


def run(out_dir: str | Path, quick: bool = False, *, kappas: tuple[float, ...] | None = None,
        seeds: tuple[int, ...] | None = None, epochs: int | None = None, peer: bool | None = None,
        normalizers: tuple[str, ...] | None = None, config: SPDCovarianceConfig | None = None,
        log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the benchmark and write ``report.md`` and ``results.json`` into ``out_dir``; return the results.

    ``quick=True`` runs :meth:`SPDCovarianceConfig.quick` (two condition numbers, one seed, one lr,
    ~30 s on one core); the keywords override single settings of either configuration, ``config``
    replaces it. ``peer=None`` runs the geoopt peer when geoopt is installed (skipped cleanly otherwise).
    """
    cfg = copy.deepcopy(config) if config is not None else (
        SPDCovarianceConfig.quick() if quick else SPDCovarianceConfig())
    if kappas is not None:
        cfg.kappas = tuple(kappas)
    if seeds is not None:
        cfg.seeds = tuple(seeds)
    if epochs is not None:
        cfg.epochs = epochs
    if normalizers is not None:
        unknown = [v for v in normalizers if v not in NORMALIZERS]
        if unknown:
            raise ValueError(f"Unknown normalizer {unknown[0]!r}; expected one of: {', '.join(NORMALIZERS)}")
        cfg.normalizers = tuple(normalizers)
    if peer is not None:
        cfg.peer = peer
    have_geoopt = geoopt_available()
    variants = list(cfg.normalizers) + ([PEER] if cfg.peer and have_geoopt else [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs, data_stats = [], {}
    for kappa in cfg.kappas:
        data = make_data(cfg, kappa)
        data_stats[f"{kappa:g}"] = _condition_numbers(data["train"][0])
        for variant in variants:
            for mult in cfg.lr_multipliers:
                for seed in cfg.seeds:
                    r = train_one(cfg, data, variant, mult, seed)
                    r["kappa"] = kappa
                    runs.append(r)
                    if log:
                        log(f"kappa={kappa:g} {variant:<28} lr x{mult:g} seed {seed}: val {r['val_acc']:.3f} "
                            f"test {r['test_acc']:.3f}{' (diverged)' if r['diverged'] else ''} "
                            f"[{r['seconds']:.1f} s]")
    summary = _summarize(cfg, runs, variants)
    results = {"config": asdict(cfg), "variants": variants, "geoopt": have_geoopt,
               "peer_skipped": bool(cfg.peer and not have_geoopt), "data_condition_numbers": data_stats,
               "summary": summary, "runs": runs, "seconds": time.perf_counter() - started,
               "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report(results), encoding="utf-8")
    return results


def _summarize(cfg: SPDCovarianceConfig, runs: list[dict], variants: list[str]) -> dict[str, dict[str, dict]]:
    """``{variant: {kappa: {best lr multiplier, test mean/min/max, val mean, diverged runs}}}``."""
    summary: dict[str, dict[str, dict]] = {}
    for variant in variants:
        summary[variant] = {}
        for kappa in cfg.kappas:
            best = None
            for mult in cfg.lr_multipliers:
                cell = [r for r in runs if r["variant"] == variant and r["kappa"] == kappa
                        and r["lr_multiplier"] == mult]
                val = statistics.fmean(r["val_acc"] for r in cell)
                if best is None or val > best[0]:
                    best = (val, mult, cell)
            val, mult, cell = best
            tests = [r["test_acc"] for r in cell]
            summary[variant][f"{kappa:g}"] = {
                "lr_multiplier": mult, "val_mean": val, "test_mean": statistics.fmean(tests),
                "test_min": min(tests), "test_max": max(tests),
                "diverged": sum(r["diverged"] for r in runs if r["variant"] == variant and r["kappa"] == kappa),
                "runs": sum(1 for r in runs if r["variant"] == variant and r["kappa"] == kappa)}
    return summary


def report(results: dict[str, Any]) -> str:
    """The markdown report of :func:`run`'s results."""
    cfg, summary = results["config"], results["summary"]
    kappas = [f"{k:g}" for k in cfg["kappas"]]
    lines = ["# spd-covariance", "",
             f"Synthetic SPD covariance classification ({cfg['classes']} classes, n = {cfg['n']}, "
             f"{cfg['train_per_class']}/{cfg['val_per_class']}/{cfg['test_per_class']} train/val/test per class, "
             f"T = {cfg['samples']} draws per matrix), model BiMap {cfg['n']}->{cfg['hidden'][0]} -> [norm] -> ReEig "
             f"-> BiMap {cfg['hidden'][0]}->{cfg['hidden'][1]} -> [norm] -> LogEig -> Linear, float64; "
             f"{cfg['epochs']} epochs of batch {cfg['batch_size']}; steepest `{cfg['preset']}` "
             f"(lr {cfg['lr']:g}, adamw_lr {cfg['adamw_lr']:g}; the peer lr {cfg['peer_lr']:g}) x lr multipliers "
             f"{', '.join(f'{m:g}' for m in cfg['lr_multipliers'])}; seeds {', '.join(map(str, cfg['seeds']))}; "
             f"batch-norm barycenter iterations {cfg['bn_iters']}.", "",
             "Test accuracy at the lr multiplier with the best mean validation accuracy: mean over seeds "
             "[min, max] (lr multiplier); diverged runs (any lr of the grid) score chance. Columns: kappa of the "
             "fixed congruence (data condition number median / max below).", ""]
    lines.append("| normalizer | " + " | ".join(f"kappa {k}" for k in kappas) + " | drop (first - last) |")
    lines.append("| --- | " + " | ".join("---" for _ in kappas) + " | --- |")
    for variant, cells in summary.items():
        row = []
        for k in kappas:
            c = cells[k]
            text = f"{c['test_mean']:.3f} [{c['test_min']:.3f}, {c['test_max']:.3f}] (x{c['lr_multiplier']:g})"
            if c["diverged"]:
                text += f"; {c['diverged']}/{c['runs']} grid runs diverged"
            row.append(text)
        drop = cells[kappas[0]]["test_mean"] - cells[kappas[-1]]["test_mean"]
        lines.append(f"| {variant} | " + " | ".join(row) + f" | {drop:+.3f} |")
    conds = results["data_condition_numbers"]
    lines += ["", "| data | " + " | ".join(f"kappa {k}" for k in kappas) + " |",
              "| --- | " + " | ".join("---" for _ in kappas) + " |",
              "| condition number, median / max | " + " | ".join(
                  f"{conds[k]['median']:.3g} / {conds[k]['max']:.3g}" for k in kappas) + " |", ""]
    if results["peer_skipped"]:
        lines.append("The geoopt peer was skipped: geoopt is not installed (`pip install geoopt`).")
    lines.append(f"Total time {results['seconds']:.0f} s (torch {results['torch']}).")
    return "\n".join(lines) + "\n"
