"""Benchmarks for steepest: real tasks trained side by side with torch's optimizers, and kernels.

Modules (imported on demand, so ``python -m steepest.bench.worker`` stays clean):

* :mod:`steepest.bench.tasks`         the tasks: ``shakespeare-char``, ``text:PATH``, ``digits-cnn``,
                                      ``matrix-sensing(-asym)`` (data, model, metric, budgets)
* :mod:`steepest.bench.peers`         the optimizers compared (torch references, every preset);
  :mod:`steepest.bench.external_peers` the same-name optimizers of other libraries
* :mod:`steepest.bench.train`         the training loop of one cell, with timing and memory
* :mod:`steepest.bench.cells`         one (task, optimizer, lr, seed) result per file, for resuming
* :mod:`steepest.bench.config`        the suite's definition (``SuiteConfig``), presets, references
* :mod:`steepest.bench.runner`        the suite: plan, workers (one process per task and optimizer)
* :mod:`steepest.bench.summary`       best lr, mean and spread, targets, ratios, headlines
* :mod:`steepest.bench.report`        ``report.md``, PNG plots and ``results.json``
* :mod:`steepest.bench.kernels`       the orthogonalization kernel micro-benchmark: the run loop;
                                      its parts ``kernel_config``, ``kernel_shapes``,
                                      ``kernel_backends``, ``kernel_measure``, ``kernel_compiled``
                                      and the report, ``kernel_report``
* :mod:`steepest.bench.diagnose`      ``steepest diagnose`` (and its report,
                                      :mod:`steepest.bench.diagnose_report`)
* :mod:`steepest.bench.data`, :mod:`steepest.bench.gpt`  the text corpus and the small GPT
* :mod:`steepest.bench.environment`, :mod:`steepest.bench.progress`  machine facts, progress lines

Command line: ``steepest bench [--quick | --full]``, ``steepest bench kernels [--full]`` and
``steepest diagnose``.
"""
