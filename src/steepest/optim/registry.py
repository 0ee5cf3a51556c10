"""The registry of presets: one entry per name, holding everything about a preset that is not in its
own file. ``steepest.create``/``for_model`` look names up here; the exports of ``steepest`` and
``steepest.optim``, the tables of ``docs/choosing.md`` and the benchmark's ``steepest-<name>``
peers are generated from it (``make docs``), and the conformance suite runs every check over
every entry with the entry's knobs.

Adding a preset: write its file (a ``GeometryOptimizer`` subclass whose constructor sets
``recipes``) and add its entry here; then ``make docs``.

The conformance knobs tune the generic checks (``direction_kwargs``: a learning rate for the
40-step "goes the right direction" problem; ``bf16_max_rel_diff``: how far a bfloat16 run may
drift from the float32 one) and add the exact errors of the preset's own arguments; the comments
say what each setting gave when it was chosen.
"""
from __future__ import annotations

from .auon import AuON, HybridAuON
from .diffgrad import DiffGrad
from .engine import GeometryOptimizer
from .lanton import LANTON
from .lion import Lion, LionK
from .mfac import MFAC
from .muon import Muon
from .normuon import NorMuon
from .preset_spec import ErrorCase, Knobs, Preset
from .regnewton import RegularizedNewton
from .scion import Scion
from .signum import Signum

REGISTRY: dict[str, Preset] = {
    # The 40-step problem's embedding/head/vector groups want an AdamW lr of 1e-2 (the default since
    # 0.10; set explicitly so that the check does not move with it). Measured ratio with these: ~0.05.
    "muon": Preset(
        Muon, bench={"lr": 0.02},
        conformance=Knobs(
            direction_kwargs={"lr": 0.05, "adamw_lr": 1e-2},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("adjust_lr", {"adjust_lr": "nope"}, ValueError,
                          "Unknown adjust_lr 'nope'; expected one of: original, match_rms_adamw, rms_to_rms, none"),
                ErrorCase("adamw_beta1", {"adamw_betas": (1.0, 0.95)}, ValueError,
                          "Invalid beta parameter at index 0: 1.0", roles=("hidden", "vector")),
                ErrorCase("adamw_lr", {"adamw_lr": -1e-3}, ValueError,
                          "Invalid learning rate: -0.001", roles=("hidden", "vector")),
                ErrorCase("embedding_lr", {"embedding_lr": -1e-3}, ValueError, "Invalid learning rate: -0.001"),
                ErrorCase("adamw_eps", {"adamw_eps": -1.0}, ValueError,
                          "Invalid eps value: -1.0; expected a positive number", roles=("hidden", "vector")),
            ),
        )),
    # Measured ratio with lr 2^-6: ~0.05.
    "scion": Preset(
        Scion, bench={"lr": 2.0 ** -6},
        conformance=Knobs(
            direction_kwargs={"lr": 2**-6},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("hidden_radius", {"hidden_radius": 0.0}, ValueError,
                          "Invalid hidden_radius value: 0.0; expected a positive number"),
                ErrorCase("head_radius", {"head_radius": -1}, ValueError,
                          "Invalid head_radius value: -1; expected a positive number"),
                ErrorCase("constrained_type", {"constrained": "yes"}, TypeError,
                          "Invalid type for constrained: expected bool, got str"),
            ),
        )),
    # AuON's update has Frobenius norm lr*sqrt(max(1, m/n)) (RMS ~sqrt(min(m, n)) below Muon's), so
    # the 40-step problem wants a large lr (measured before 0.10, whose default is 0.4).
    # Measured ratios (adamw_lr 1e-2): lr 0.055 -> 0.31, 0.1 -> 0.18, 0.2 -> 0.058, 0.4 -> 0.028.
    # bf16 relative difference at lr 0.2: 0.16 (norm.weight, the AdamW side, as muon).
    "auon": Preset(
        AuON, bench={"lr": 0.4},
        conformance=Knobs(
            direction_kwargs={"lr": 0.2, "adamw_lr": 1e-2},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("cosh_brake_type", {}, TypeError, "Invalid type for cosh_brake: expected bool, got str",
                          group={"cosh_brake": "yes"}),
            ),
        )),
    # Same scaling as AuON (the brake renormalizes the Newton-Schulz output). Measured ratios
    # (adamw_lr 1e-2): lr 0.055 -> 0.30, 0.1 -> 0.17, 0.2 -> 0.050, 0.4 -> 0.022. bf16 relative
    # difference at lr 0.2: 0.17 (norm.weight).
    "hybrid_auon": Preset(
        HybridAuON, bench={"lr": 0.4},
        conformance=Knobs(
            direction_kwargs={"lr": 0.2, "adamw_lr": 1e-2},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("cosh_brake_type", {}, TypeError, "Invalid type for cosh_brake: expected bool, got int",
                          group={"cosh_brake": 1}),
            ),
        )),
    # Measured ratio ~0.05, bf16 relative difference 0.16 (as muon).
    "normuon": Preset(
        NorMuon, bench={"lr": 0.02},
        conformance=Knobs(
            direction_kwargs={"lr": 0.05, "adamw_lr": 1e-2},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("beta2", {"beta2": 1.0}, ValueError, "Invalid beta2 value: 1.0; expected 0 <= beta2 < 1"),
                ErrorCase("beta2_type", {"beta2": "x"}, TypeError, "Invalid type for beta2: expected a real number, got str"),
                ErrorCase("scale", {"scale": "l2"}, ValueError, "Unknown scale 'l2'; expected one of: frobenius, rms"),
            ),
        )),
    # Sign updates move every entry by lr: lr 1e-2 gives ratio ~0.07. In bfloat16 the sign of
    # near-zero momentum entries flips more often: measured relative difference 0.26.
    "lion": Preset(
        Lion, bench={"lr": 6e-4},
        conformance=Knobs(direction_kwargs={"lr": 1e-2}, direction_max_ratio=0.2, bf16_max_rel_diff=0.35)),
    # lr 3e-2: ratio ~0.17, bf16 relative difference 0.12.
    "lion_k": Preset(
        LionK, bench={"lr": 3e-2},
        conformance=Knobs(
            direction_kwargs={"lr": 3e-2},
            direction_max_ratio=0.3,
            error_cases=(
                ErrorCase("kappa", {"kappa": "linf"}, ValueError, "Unknown kappa 'linf'; expected one of: l1, l2, nuclear"),
            ),
        )),
    # lr 2e-2: ratio ~0.001, bf16 relative difference 0.16.
    "signum": Preset(
        Signum, bench={"lr": 5e-4},
        conformance=Knobs(direction_kwargs={"lr": 2e-2}, direction_max_ratio=0.2)),
    # lr 3e-2: ratio ~0.01, bf16 relative difference 0.11.
    "diffgrad": Preset(
        DiffGrad, bench={"lr": 4e-3},
        conformance=Knobs(direction_kwargs={"lr": 3e-2}, direction_max_ratio=0.2)),
    # Without momentum, M-FAC's steps on a fixed batch oscillate (the first step has length
    # lr*m/||g||): measured ratio 0.49 at the defaults (lr 1e-3), 0.43 / 0.36 at lr 3e-3 / 4e-3.
    # lr 5e-3 with momentum 0.5: ratio 0.077, bf16 relative difference 0.13 (norm.bias). With
    # momentum 0.9 and lr 1e-3 (ratio 0.005) the bf16 updates of norm.weight round away.
    "mfac": Preset(
        MFAC, bench={"lr": 3e-3},
        conformance=Knobs(
            direction_kwargs={"lr": 5e-3, "momentum": 0.5},
            direction_max_ratio=0.25,
            error_cases=(
                ErrorCase("ngrads_zero", {"ngrads": 0}, ValueError, "Invalid ngrads: 0; expected an integer >= 1"),
                ErrorCase("ngrads_float", {"ngrads": 2.5}, TypeError, "Invalid type for ngrads: expected an int, got float"),
                ErrorCase("damp_zero", {"damp": 0.0}, ValueError, "Invalid damp value: 0.0; expected a positive number"),
                ErrorCase("transform", {}, ValueError, "MFAC supports only transform 'momentum' (an EMA of the "
                          "preconditioned direction); got 'adam'", group={"transform": "adam"}),
            ),
        )),
    # Noise-adaptive by default; lr 0.05 / sign_lr 2e-2: ratio ~0.016, bf16 relative difference 0.12.
    "lanton": Preset(
        LANTON, bench={"lr": 0.04, "sign_lr": 5e-4},
        conformance=Knobs(
            direction_kwargs={"lr": 0.05, "sign_lr": 2e-2},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("noise_beta", {"noise_beta": 1.0}, ValueError,
                          "Invalid noise_beta value: 1.0; expected 0 <= noise_beta < 1"),
                ErrorCase("noise_source", {"noise_source": "twice"}, ValueError,
                          "Unknown noise_source 'twice'; expected one of: previous, second"),
                ErrorCase("noise_rule", {"noise_rule": "max"}, ValueError,
                          "Unknown noise_rule 'max'; expected one of: min_ratio, sqrt_ratio, alpha_sqrt, gmean_ratio"),
                ErrorCase("noise_alpha_negative", {"noise_alpha": -0.5}, ValueError,
                          "Invalid noise_alpha value: -0.5; expected a finite number >= 0"),
                ErrorCase("noise_alpha_inf", {"noise_alpha": float("inf")}, ValueError,
                          "Invalid noise_alpha value: inf; expected a finite number >= 0"),
                ErrorCase("noise_alpha_type", {"noise_alpha": "0.3"}, TypeError,
                          "Invalid type for noise_alpha: expected a real number, got str"),
                ErrorCase("noise_every_zero", {"noise_every": 0}, ValueError,
                          "Invalid noise_every value: 0; expected an integer >= 1"),
                ErrorCase("noise_every_float", {"noise_every": 2.0}, TypeError,
                          "Invalid type for noise_every: expected int, got float"),
                ErrorCase("noise_every_bool", {"noise_every": True}, TypeError,
                          "Invalid type for noise_every: expected int, got bool"),
                ErrorCase("noise_ns", {"noise_ns": "nope"}, ValueError,
                          "Unknown noise_ns 'nope'; expected one of: keller, you, quintic, polar_express, "
                          "polar_express_8, svd"),
                ErrorCase("noise_adaptive_type", {"noise_adaptive": 1}, TypeError,
                          "Invalid type for noise_adaptive: expected bool, got int"),
            ),
        )),
    # Without a closure (the conformance suite's and the benchmark's steps) the step is the
    # regularized Newton step on the Fisher window with gamma fixed at gamma_0 = 1: its length is at
    # most lr * gamma per group. Measured ratios: lr 0.03 -> 0.75, 0.1 -> 0.26, 0.3 -> 0.078, 1 -> 0.082.
    # Bench lr 0.1: the quick suite's best lr was 0.03 on matrix-sensing and 0.3 on digits-cnn
    # (docs/algorithms/regnewton.md).
    "regnewton": Preset(
        RegularizedNewton, bench={"lr": 0.1},
        conformance=Knobs(
            direction_kwargs={"lr": 0.3},
            direction_max_ratio=0.2,
            error_cases=(
                ErrorCase("hessian", {"hessian": "dense"}, ValueError,
                          "Unknown hessian 'dense'; expected one of: fisher, hvp"),
                ErrorCase("search", {"search": "armijo"}, ValueError,
                          "Unknown search 'armijo'; expected one of: none, loss"),
                ErrorCase("gamma_zero", {"gamma": 0.0}, ValueError,
                          "Invalid gamma value: 0.0; expected a positive number"),
                ErrorCase("max_trials_zero", {"max_trials": 0}, ValueError,
                          "Invalid max_trials: 0; expected an integer >= 1"),
                ErrorCase("cg_iters_float", {"cg_iters": 2.5}, TypeError,
                          "Invalid type for cg_iters: expected an int, got float"),
                ErrorCase("cg_tol_negative", {"cg_tol": -1.0}, ValueError, "Invalid cg_tol value: -1.0"),
                ErrorCase("momentum_with_search", {"momentum": 0.5, "search": "loss"}, ValueError,
                          "RegularizedNewton: momentum must be 0 with search='loss' or hessian='hvp' (got 0.5)"),
            ),
        )),
}

#: name -> optimizer class
PRESETS: dict[str, type[GeometryOptimizer]] = {name: entry.cls for name, entry in REGISTRY.items()}


def preset_class(name: str) -> type[GeometryOptimizer]:
    """The preset class registered under ``name`` (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    try:
        return PRESETS[key]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown optimizer preset {name!r}; expected one of: {', '.join(PRESETS)}") from None
