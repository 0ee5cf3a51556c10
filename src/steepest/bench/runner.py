"""Train the benchmark GPT with each optimizer and measure quality, speed and memory.

Protocol (the same for every optimizer, so that differences are paired):

* the same initial weights (``GPT(cfg, seed)``) and the same training batches (random windows
  drawn from a generator seeded with ``seed + 1``);
* the same schedule: linear warm-up for ``warmup_steps`` then a cosine decay to
  ``final_lr_fraction`` of the peak at the last step, one ``LambdaLR`` multiplier per optimizer that
  scales every parameter group alike;
* the same fixed validation batches (seed ``seed + 2``), evaluated at step 0, every ``eval_every``
  steps and at the last step.

Timing uses ``time.perf_counter`` around three spans of each step: the whole step (zero_grad,
forward, backward, optimizer step, schedule), forward+backward, and ``optimizer.step()`` alone. The
report gives medians over the steps after the first ``timing_skip`` (warm-up). Evaluation time is
excluded from the training clock ``train_seconds``.

Memory: by default each optimizer runs in its own Python process (``python -m
steepest.bench.runner``), whose peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) is
then attributable to that optimizer alone; the exact optimizer state size is the sum of the bytes of
every tensor in the optimizers' ``.state``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .data import CharData, fixed_batches, load_data, random_batch
from .gpt import GPT, GPTConfig, count_parameters
from ..optim import PRESETS
from .peers import PEER_NAMES, STEEPEST_PEERS, PeerUnavailable, build_peer, state_bytes
from .progress import Progress

DEFAULT_OPTIMIZERS = PEER_NAMES  # every peer: the two torch references and every steepest preset
REFERENCES = {"adamw": "torch.optim.AdamW", "torch-muon": "torch.optim.Muon"}
# The quick default: half of research/benchmarks.md §3's schedule (batch 32, 300 instead of 600
# steps): about 55 s per optimizer, 11-12 minutes for the twelve default optimizers on a 2-core
# AVX-512 CPU with native bf16 (measured: ~85 ms/step at batch 16, ~190 ms at batch 32). On a CPU
# without native bf16, torch.optim.Muon's bfloat16 Newton-Schulz adds ~0.76 s per step (~4 min).
QUICK_STEPS = 300
QUICK_BATCH_SIZE = 32
QUICK_EVAL_EVERY = 25
MIB = 1024.0 * 1024.0


@dataclass
class BenchConfig:
    """Everything that defines one benchmark run (saved verbatim in ``results.json``)."""

    task: str = "shakespeare-char"
    text_file: str | None = None
    optimizers: list[str] = field(default_factory=lambda: list(DEFAULT_OPTIMIZERS))
    steps: int = QUICK_STEPS
    batch_size: int = QUICK_BATCH_SIZE
    eval_every: int = QUICK_EVAL_EVERY
    eval_batches: int = 8
    seed: int = 1234
    warmup_steps: int | None = None  # None: 5 % of the steps (at least 1)
    final_lr_fraction: float = 0.1
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    ctx: int = 128
    lrs: dict[str, float] = field(default_factory=dict)  # per-optimizer peak lr overrides
    target_loss: float | None = None  # None: AdamW's final val loss in this run
    threads: int | None = None  # None: leave torch's default
    timing_skip: int = 3
    isolate: bool = True  # one subprocess per optimizer (needed for a per-optimizer peak RSS)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer")
        unknown = [n for n in self.optimizers if n not in PEER_NAMES]
        if unknown:
            raise ValueError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(PEER_NAMES)}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers are listed twice: {', '.join(self.optimizers)}")
        bad_lr = [n for n in self.lrs if n not in PEER_NAMES]
        if bad_lr:
            raise ValueError(f"lr given for unknown optimizer {bad_lr[0]!r}; "
                             f"choose from {', '.join(PEER_NAMES)}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def warmup(self) -> int:
        """The number of warm-up steps actually used."""
        if self.warmup_steps is not None:
            return max(0, min(self.warmup_steps, self.steps))
        return max(1, round(0.05 * self.steps))

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, n_layer=self.n_layer, d_model=self.d_model,
                         n_head=self.n_head, ctx=self.ctx)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BenchConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def lr_multiplier(step: int, total: int, warmup: int, final_fraction: float) -> float:
    """Schedule multiplier for the update at 0-based ``step``: linear warm-up, then cosine.

    During warm-up the multiplier is ``(step + 1) / warmup``; afterwards it follows half a cosine
    from 1 down to ``final_fraction`` at the last step ``total - 1``.
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total - 1 - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def machine_info() -> dict:
    """What the numbers were measured on."""
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API: absent or failing on some builds
        bf16 = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:
        capability = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model() or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": capability,
        "mkldnn_bf16_supported": bf16,
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@torch.no_grad()
def evaluate(model: GPT, batches) -> float:
    """Mean cross-entropy (nats per character) over the fixed validation batches."""
    model.eval()
    losses = [model(x, y)[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def _median_ms(values: list[float], skip: int) -> float | None:
    kept = values[skip:] if len(values) > skip else values
    return statistics.median(kept) * 1000.0 if kept else None


def train_one(config: BenchConfig, name: str, data: CharData | None = None,
              show_progress: bool = True) -> dict:
    """Train the benchmark model with optimizer ``name`` in this process and return its record.

    Raises :class:`PeerUnavailable` when the optimizer cannot be built here.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = load_data(config.task, config.text_file) if data is None else data
    model_cfg = config.model_config(data.vocab_size)
    if len(data.val) <= model_cfg.ctx + 1 or len(data.train) <= model_cfg.ctx + 1:
        raise ValueError(
            f"{data.name}: {len(data.train)} train / {len(data.val)} val tokens are too few for a "
            f"context of {model_cfg.ctx}; use a longer text or a smaller ctx"
        )
    model = GPT(model_cfg, seed=config.seed)
    peer = build_peer(name, model, lr=config.lrs.get(name))

    def schedule(step: int) -> float:
        return lr_multiplier(step, config.steps, config.warmup, config.final_lr_fraction)

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in peer.optimizers]
    train_gen = torch.Generator().manual_seed(config.seed + 1)
    val_batches = fixed_batches(data.val, config.eval_batches, config.batch_size, model_cfg.ctx,
                                seed=config.seed + 2)
    rss_before = peak_rss_mib()

    curve = [{"step": 0, "val_loss": evaluate(model, val_batches), "train_seconds": 0.0}]
    layer_stats: list[dict] = []  # LANTON-style optimizers: per-layer noise and lr factor over training
    step_s, fwd_bwd_s, opt_s, train_losses = [], [], [], []
    train_seconds = 0.0
    diverged = False
    bar = Progress(name, config.steps, enabled=show_progress)
    for step in range(1, config.steps + 1):
        x, y = random_batch(data.train, config.batch_size, model_cfg.ctx, train_gen)
        t0 = time.perf_counter()
        peer.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        t1 = time.perf_counter()
        peer.step()
        t2 = time.perf_counter()
        for scheduler in schedulers:
            scheduler.step()
        t3 = time.perf_counter()
        step_s.append(t3 - t0)
        fwd_bwd_s.append(t1 - t0)
        opt_s.append(t2 - t1)
        train_seconds += t3 - t0
        loss_value = loss.item()
        train_losses.append(loss_value)
        if not math.isfinite(loss_value):
            diverged = True
        if step % config.eval_every == 0 or step == config.steps or diverged:
            val = evaluate(model, val_batches)
            curve.append({"step": step, "val_loss": val, "train_seconds": train_seconds})
            rows = _layer_stats(peer)
            if rows:
                layer_stats.append({"step": step, "layers": rows})
            bar.update(step, loss_value, val)
        else:
            bar.update(step, loss_value)
        if diverged:
            break
    bar.close()

    return {
        "name": name,
        "status": "diverged" if diverged else "ok",
        "step_covers": peer.step_covers,
        "hyperparameters": peer.hyperparameters,
        "explanation": peer.explanation,
        "params": count_parameters(model),
        "steps_done": len(step_s),
        "curve": curve,
        "train_loss": train_losses,
        "layer_stats": layer_stats,
        "final_val_loss": curve[-1]["val_loss"],
        "train_seconds": train_seconds,
        "step_ms": _median_ms(step_s, config.timing_skip),
        "fwd_bwd_ms": _median_ms(fwd_bwd_s, config.timing_skip),
        "opt_step_ms": _median_ms(opt_s, config.timing_skip),
        "per_step_ms": {"step": [round(t * 1000.0, 3) for t in step_s],
                        "fwd_bwd": [round(t * 1000.0, 3) for t in fwd_bwd_s],
                        "opt_step": [round(t * 1000.0, 3) for t in opt_s]},
        "state_mib": state_bytes(peer.optimizers) / MIB,
        "rss_before_train_mib": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
        "isolated": False,
    }


def _layer_stats(peer) -> list[dict]:
    """``layer_stats()`` of the peer's noise-adaptive optimizer, trimmed to name, noise and factor."""
    rows = []
    for opt in peer.optimizers:
        for row in getattr(opt, "layer_stats", lambda: [])():
            rows.append({"parameter": row["parameter"], "role": row["role"], "noise": row["noise"],
                         "factor": row["factor"]})
    return rows


def _child_env() -> dict:
    """The environment for a child run, with this ``steepest`` package importable."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding steepest/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def run_isolated(config: BenchConfig, name: str, show_progress: bool = True) -> dict:
    """Run :func:`train_one` for ``name`` in a fresh Python process and return its record."""
    with tempfile.TemporaryDirectory(prefix="steepest-bench-") as tmp:
        config_path = Path(tmp) / "config.json"
        result_path = Path(tmp) / "result.json"
        config_path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        command = [sys.executable, "-m", "steepest.bench.runner", "--config", str(config_path),
                   "--optimizer", name, "--result", str(result_path)]
        if not show_progress:
            command.append("--quiet")
        done = subprocess.run(command, env=_child_env())
        if result_path.is_file():
            record = json.loads(result_path.read_text(encoding="utf-8"))
        else:
            record = {"name": name, "status": "failed",
                      "reason": f"the benchmark subprocess exited with code {done.returncode} "
                                f"and wrote no result"}
    if record.get("status") in ("ok", "diverged"):
        record["isolated"] = True
    return record


def _safe_train(config: BenchConfig, name: str, data: CharData | None, show_progress: bool) -> dict:
    """:func:`train_one`, with unavailable peers and crashes turned into records."""
    try:
        return train_one(config, name, data, show_progress)
    except PeerUnavailable as exc:
        return {"name": name, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # one broken optimizer must not lose the other results
        return {"name": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()}


def steps_to_target(curve: list[dict], target: float) -> tuple[int | None, float | None]:
    """The first evaluated step (and its training seconds) whose val loss is <= ``target``."""
    for point in curve:
        if point["step"] > 0 and point["val_loss"] <= target:
            return point["step"], point["train_seconds"]
    return None, None


def ratio_key(reference: str) -> str:
    """The key of the ratios against ``reference`` in the results: ``vs_adamw``, ``vs_torch_muon``."""
    return "vs_" + reference.replace("-", "_")


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def summarize(config: BenchConfig, runs: dict[str, dict]) -> dict:
    """Targets, steps/seconds to target, ratios against the references and headline sentences."""
    ok = {n: r for n, r in runs.items() if r.get("status") == "ok"}
    if config.target_loss is not None:
        target, source = config.target_loss, "given with --target-loss"
    elif "adamw" in ok:
        target, source = ok["adamw"]["final_val_loss"], "AdamW's final val loss in this run"
    elif ok:
        worst = max(ok, key=lambda n: ok[n]["final_val_loss"])
        target, source = ok[worst]["final_val_loss"], f"the worst final val loss ({worst}) in this run"
    else:
        target, source = None, "no optimizer finished"
    for run in ok.values():
        run["steps_to_target"], run["seconds_to_target"] = (
            steps_to_target(run["curve"], target) if target is not None else (None, None))

    ratios: dict[str, dict] = {}
    metrics = ("step_ms", "fwd_bwd_ms", "opt_step_ms", "steps_to_target", "seconds_to_target",
               "peak_rss_mib", "state_mib", "final_val_loss")
    for name, run in ok.items():
        if name == "adamw":
            continue  # the baseline: its ratio against torch-muon is the inverse of torch-muon's row
        for ref in REFERENCES:
            if ref in ok and ref != name:
                ratios.setdefault(name, {})[ratio_key(ref)] = {
                    m: _ratio(run.get(m), ok[ref].get(m)) for m in metrics}
    return {"target_loss": target, "target_source": source, "ratios": ratios,
            "headlines": headlines(ok, target)}


def steepest_label(name: str) -> str:
    """``steepest.<Class>`` of a steepest peer, saying when it switches the noise-adaptive rates."""
    preset, kwargs = STEEPEST_PEERS[name]
    label = f"steepest.{PRESETS[preset].__name__}"
    if "noise_adaptive" in kwargs:
        label += f"(noise_adaptive={kwargs['noise_adaptive']})"
    return label


def headlines(ok: dict[str, dict], target: float | None) -> list[str]:
    """Plain sentences with the comparisons people ask about first."""
    lines = []
    pairs = [("steepest-muon", "torch-muon", "steepest.Muon", "torch.optim.Muon")]
    pairs += [(name, "adamw", steepest_label(name), "torch.optim.AdamW") for name in STEEPEST_PEERS]
    pairs += [("torch-muon", "adamw", "torch.optim.Muon", "torch.optim.AdamW")]
    for name, ref, label, ref_label in pairs:
        if name not in ok or ref not in ok:
            continue
        a, b = ok[name], ok[ref]
        if ref == "torch-muon":
            lines.append(f"{label} optimizer step: {a['opt_step_ms'] / b['opt_step_ms']:.2f}x {ref_label}'s "
                         f"({a['opt_step_ms']:.1f} ms vs {b['opt_step_ms']:.1f} ms)")
        if target is not None and a.get("steps_to_target") and b.get("steps_to_target"):
            lines.append(
                f"{label} reaches val {target:.3f} in {a['steps_to_target'] / b['steps_to_target']:.2f}x "
                f"{ref_label}'s steps ({a['steps_to_target']} vs {b['steps_to_target']}) and "
                f"{a['seconds_to_target'] / b['seconds_to_target']:.2f}x its training seconds "
                f"({a['seconds_to_target']:.1f} s vs {b['seconds_to_target']:.1f} s)")
        elif target is not None and b.get("steps_to_target") and not a.get("steps_to_target"):
            lines.append(f"{label} did not reach val {target:.3f} ({ref_label} did, "
                         f"in {b['steps_to_target']} steps)")
    return lines


def run_benchmark(config: BenchConfig, show_progress: bool = True) -> dict:
    """Run every optimizer of ``config`` and return the full results (see ``report.py``)."""
    started = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    data = load_data(config.task, config.text_file)  # downloads and caches once, before any child
    model_cfg = config.model_config(data.vocab_size)
    runs: dict[str, dict] = {}
    for name in config.optimizers:
        if config.isolate:
            runs[name] = run_isolated(config, name, show_progress)
        else:
            runs[name] = _safe_train(config, name, data, show_progress)
    notes = []
    for name, run in runs.items():
        if run["status"] == "skipped":
            notes.append(f"{name} skipped: {run['reason']}")
        elif run["status"] == "failed":
            notes.append(f"{name} failed: {run['reason']}")
        elif run["status"] == "diverged":
            notes.append(f"{name} diverged (non-finite loss) at step {run['steps_done']}")
    machine = machine_info()
    if runs.get("torch-muon", {}).get("status") == "ok":
        if machine["mkldnn_bf16_supported"]:
            notes.append("oneDNN reports native bf16 on this CPU, so torch.optim.Muon's hard-coded "
                         "bfloat16 Newton-Schulz is fast here; on CPUs without AVX512-BF16/AMX it runs "
                         "on a slow fallback (~0.76 s per step for this model, research/benchmarks.md §1)")
        elif machine["mkldnn_bf16_supported"] is False:
            notes.append("no native bf16 on this CPU: torch.optim.Muon's hard-coded bfloat16 "
                         "Newton-Schulz runs on a slow fallback path; steepest uses float32 on CPU")
    if not config.isolate:
        notes.append("all optimizers ran in one process: peak RSS is cumulative, not per optimizer")
    summary = summarize(config, runs)
    return {
        "schema": 1,
        "config": config.to_dict(),
        "warmup_steps": config.warmup,
        "machine": machine,
        "data": {"name": data.name, "n_chars": data.n_chars, "vocab_size": data.vocab_size,
                 "sha256_prefix": data.sha256, "train_tokens": len(data.train),
                 "val_tokens": len(data.val),
                 "tokens_per_step": config.batch_size * model_cfg.ctx},
        "model": {**model_cfg.as_dict(), "params": count_parameters(GPT(model_cfg, seed=config.seed))},
        "runs": runs,
        **summary,
        "notes": notes,
        "total_wall_seconds": time.perf_counter() - started,
    }


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of one isolated run: read a config, train one optimizer, write its record."""
    parser = argparse.ArgumentParser(prog="python -m steepest.bench.runner",
                                     description="Run one benchmark optimizer (used by `steepest bench`).")
    parser.add_argument("--config", required=True, help="JSON file with a BenchConfig")
    parser.add_argument("--optimizer", required=True, choices=PEER_NAMES)
    parser.add_argument("--result", required=True, help="where to write the JSON record")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    config = BenchConfig.from_dict(json.loads(Path(args.config).read_text(encoding="utf-8")))
    record = _safe_train(config, args.optimizer, None, not args.quiet)
    Path(args.result).write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
