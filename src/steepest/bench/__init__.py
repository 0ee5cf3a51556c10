"""Benchmarks for steepest: real-data training runs compared side by side with torch optimizers.

Modules (imported on demand, so ``python -m steepest.bench.runner`` stays clean):

* :mod:`steepest.bench.data`     the ``shakespeare-char`` corpus (and ``--text FILE``), char tokenizer
* :mod:`steepest.bench.gpt`      the small nanoGPT-style model
* :mod:`steepest.bench.peers`    the optimizers compared: adamw, torch-muon, steepest-muon, steepest-scion
* :mod:`steepest.bench.runner`   training, timing and memory measurement, one process per optimizer
* :mod:`steepest.bench.report`   ``report.md``, ``val_loss.png`` and ``results.json``
* :mod:`steepest.bench.progress` the stderr progress display

Command line: ``steepest bench`` (see ``steepest bench --help``).
"""
