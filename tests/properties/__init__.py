"""Helpers of the property-based tests (tests/test_properties.py): hypothesis strategies for shapes,
tensors, spectra and hyperparameters (``strategies``) and the runner that counts generated cases
(``runner``)."""
