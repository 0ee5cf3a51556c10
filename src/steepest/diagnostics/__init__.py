"""Training diagnostics: curvature (sharpness), neural collapse, and per-layer update statistics.

- :mod:`.sharpness`: Hessian-vector products, power iteration for the top Hessian eigenvalue,
  per-layer (diagonal-block) sharpness, and Lanczos Ritz values (Sagun et al., arXiv 1706.04454);
- :mod:`.collapse`: neural collapse metrics NC1-NC4 (Papyan, Han, Donoho, arXiv 2008.08186);
- :mod:`.updates`: RMS / Frobenius / spectral norms of parameter updates, orthogonality error of
  approximate polar factors, and the dual-norm gradient noise between two gradients;
- :mod:`.layers`: which layers of a model are diagnosed, the dual norm each one's gradient noise is
  measured in, and one per-layer checkpoint (sharpness, noise, orthogonality error) taken without
  disturbing training.

``steepest diagnose`` (:mod:`steepest.bench.diagnose`) and ``steepest bench --diagnostics`` record
these over training.

The measurement functions are pure: they read tensors (and run autograd on a caller's loss) and
return numbers.
"""
from .collapse import neural_collapse
from .sharpness import hvp, lanczos_spectrum, layer_sharpness, top_eigenvalue
from .updates import gradient_noise, orthogonality_error, update_stats

__all__ = ["hvp", "top_eigenvalue", "layer_sharpness", "lanczos_spectrum", "neural_collapse", "update_stats",
           "orthogonality_error", "gradient_noise"]
