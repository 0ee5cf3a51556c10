"""Training diagnostics: curvature (sharpness), neural collapse, and per-layer update statistics.

- :mod:`.sharpness`: Hessian-vector products, power iteration for the top Hessian eigenvalue,
  per-layer (diagonal-block) sharpness, and Lanczos Ritz values (Sagun et al., arXiv 1706.04454);
- :mod:`.collapse`: neural collapse metrics NC1-NC4 (Papyan, Han, Donoho, arXiv 2008.08186);
- :mod:`.updates`: RMS / Frobenius / spectral norms of parameter updates, orthogonality error of
  approximate polar factors, and the dual-norm gradient noise between two gradients;
- :mod:`.run` and :mod:`.report`: ``steepest diagnose``, which trains a benchmark task with each
  optimizer and records every hidden layer's sharpness, noise, update norms and orthogonality error
  over training (``diagnostics.md``, ``.json``, ``.png``).

The measurement functions are pure: they read tensors (and run autograd on a caller's loss) and
return numbers.
"""
from .collapse import neural_collapse
from .sharpness import hvp, lanczos_spectrum, layer_sharpness, top_eigenvalue
from .updates import gradient_noise, orthogonality_error, update_stats
from .report import write_diagnostics_report
from .run import run_diagnostics

__all__ = ["hvp", "top_eigenvalue", "layer_sharpness", "lanczos_spectrum", "neural_collapse", "update_stats",
           "orthogonality_error", "gradient_noise", "run_diagnostics", "write_diagnostics_report"]
