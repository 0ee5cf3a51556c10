"""Shared argument descriptions for preset docstrings (kept in one place, like torch.optim)."""

PARAMS_DOC = """params: an iterable of tensors, of ``(name, tensor)`` pairs, or of param-group dicts. A group
            may carry ``role`` (``hidden``, ``conv``, ``embedding``, ``head``, ``vector``) to pick
            the preset's recipe for it; groups without one are split by shape (>= 3-D: conv,
            2-D: hidden, else vector). Any engine key (``lr``, ``geometry``, ``ns``, ...) set in a
            group overrides the recipe. :func:`steepest.for_model` builds labelled groups for you."""

NS_DOC = """ns: Newton-Schulz schedule (``keller``, ``you``, ``quintic``, ``polar_express``,
            ``polar_express_8``), ``svd`` for the exact polar factor, or a tuple ``(a, b, c)``
            applied at every step (as ``torch.optim.Muon``'s ``ns_coefficients``).
        ns_steps: Newton-Schulz iterations; ``None`` uses the schedule's default (5 for a tuple).
        ns_dtype: iteration dtype: ``auto`` (bfloat16 on CUDA and on CPUs with AMX-BF16 or AVX512-BF16, float32 elsewhere:
            :func:`steepest.polar.dtype.auto_ns_dtype`), ``float32``,
            ``bfloat16``, ``float16`` or ``float64``, by name or as a ``torch.dtype`` (stored as
            its name)."""

COMMON_DOC = """maximize: maximize the objective instead of minimizing it.
        langevin_temperature, langevin_seed: Langevin noise ``sqrt(2 lr T) xi`` after every step
            (``T = langevin_temperature >= 0``; 0, the default, is off) and the integer that seeds
            it (``docs/averaging.md``; ``set_langevin`` changes both on every group).
        on_nonfinite: ``raise`` (default: ``FloatingPointError`` naming the parameter, nothing
            modified) or ``skip`` (the whole step is skipped, warned about and counted in
            ``optimizer.nonfinite_skips``).
        distributed_mesh: ``None`` (one process), the ``ProcessGroup`` of a DDP model, or the 1-D
            ``DeviceMesh`` of an FSDP2 (``fully_shard``) model; whole-matrix LMOs are then computed
            once per matrix, on an owner rank (see ``steepest.distributed``).
        compile: ``"auto"`` (default), ``True`` or ``False``: run the pure kernels (Newton-Schulz and
            the elementwise state transforms) through ``torch.compile(fullgraph=True)``. ``"auto"``
            stays eager on every device: compiling measured slower on CPU and on an H100 (see
            ``steepest.compiled``). Compiled results agree with eager ones to float rounding, not
            bit for bit."""


NOISE_DOC = """noise_adaptive: LANTON's noise-adaptive layerwise learning rates on the groups whose
            geometry is not ``identity`` (see :class:`steepest.LANTON` and ``steepest.optim.noise``).
        noise_beta: EMA coefficient of the squared noise estimate.
        noise_source: ``previous`` (difference of consecutive gradients, no extra backward) or
            ``second`` (difference to ``step(second_grads=...)``, a second mini-batch gradient).
        noise_rule: how a layer's lr factor falls with its noise standard deviation ``sigma``
            (``s_min``: the group's smallest): ``min_ratio`` (``s_min / sigma``), ``sqrt_ratio``
            (``sqrt(s_min / sigma)``), ``alpha_sqrt`` (``((alpha^2 + s_min^2) / (alpha^2 +
            sigma^2))^(1/4)``) or ``gmean_ratio`` (``gmean(sigma) / sigma``).
        noise_alpha: ``alpha_sqrt``'s noise scale ``alpha`` (>= 0, in the units of
            ``layer_stats()``'s ``noise``): layers much quieter than it keep factors near 1.
        noise_every: measure the noise at every ``noise_every``-th step of a layer (an integer
            >= 1) and hold the factors in between; this divides the noise estimate's cost."""


def fill_doc(doc: str) -> str:
    """Insert the shared snippets into a docstring's ``{PARAMS_DOC}``-style markers (plain string
    replacement, so LaTeX braces in the math stay untouched)."""
    for key, text in (("{PARAMS_DOC}", PARAMS_DOC), ("{NS_DOC}", NS_DOC), ("{NOISE_DOC}", NOISE_DOC),
                      ("{COMMON_DOC}", COMMON_DOC)):
        doc = doc.replace(key, text)
    return doc
