"""Property-based tests (hypothesis) over every preset, geometry and Newton-Schulz schedule (issue 10).

Five properties, each over generated shapes (1x1, 1xn, nx1, tall, wide, square, conv 3-D/4-D,
vectors, scalars, zero-size), dtypes (float32, bfloat16, float64), value regimes (gradients whose
largest entry is 1e-30 .. 1e30, exact zeros, rank-1, low-rank, repeated singular values, spikes,
sparse and integer tensors) and hyperparameters in their valid ranges, one test module each:

- ``finite_updates`` (``test_finite_updates.py``): from finite gradients no NaN or Inf ever appears
  in parameters or state;
- ``lmo_identity`` (``test_lmo_identity.py``): ``<x, lmo(x)> == dual_norm(x)`` (and the dual norm
  equals its float64 closed form) and ``norm(lmo(x)) == 1``, for every geometry, both layouts and
  every shape-factor mode; a zero input gives a zero direction; zero-size tensors work;
- ``polar_band`` (``test_polar_band.py``): Newton-Schulz polar factors have singular values inside
  each schedule's documented band (``Schedule.band``, for singular values >= 1e-2 of the Frobenius
  norm) on the input's numerical rank, exact zero singular values stay (near) zero, and the spectral
  LMO's ``<x, lmo(x)>`` lies in ``band * ||x||_nuc``; the exact ``svd`` factor is checked by the
  dual-norm identity in ``lmo_identity``;
- ``state_dict_resume`` (``test_state_dict_resume.py``): saving and loading the state dict at a
  random step continues bit-identically;
- ``invalid_hyperparameters`` (``test_invalid_hyperparameters.py``, cases in ``invalid_cases.py``):
  invalid values raise the documented error type with the exact message (validation.py's formats;
  the presets' own cases from tests/conformance/presets.py), and nothing is mutated: the caller's
  groups and tensors, and on ``add_param_group`` the optimizer's groups, state and parameters, which
  then step exactly like a twin that never saw the bad group.

Helpers: ``strategies`` (hypothesis strategies for shapes, tensors, spectra and hyperparameters),
``models`` (models, gradients and state checks built from a drawn case), ``runner`` (runs a
property derandomized and counts its generated cases) and ``known_bugs`` (library bugs found by the
properties, marked ``xfail(strict=True)`` on exactly the parametrizations they break until fixed).

Every property runs derandomized (``runner.py``): the cases are the same on every run and machine,
so CI is reproducible. The number of generated cases per property is printed in the terminal summary
(``tests/conftest.py``).
"""
