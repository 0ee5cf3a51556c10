"""The benchmark tasks, by name.

==========================  ===============================================================
``shakespeare-char``        character-level GPT on Shakespeare (:mod:`.char_lm`)
``text:PATH``               the same GPT on the user's own UTF-8 file (:mod:`.char_lm`)
``digits-cnn``              a small CNN on scikit-learn's digits images (:mod:`.digits_cnn`)
``matrix-sensing``          low-rank PSD recovery with an over-parameterized ``X X^T``
                            (:mod:`.matrix_sensing`)
``matrix-sensing-asym``     the same with an asymmetric ``F G^T`` (:mod:`.matrix_sensing`)
==========================  ===============================================================
"""
from __future__ import annotations

from pathlib import Path

from .base import BUDGETS, Budget, Task, Trial, lr_multiplier
from .char_lm import ShakespeareChar, TextFile
from .digits_cnn import DigitsCNN
from .matrix_sensing import MatrixSensing, MatrixSensingAsym

#: every task class, by its ``name``
TASK_CLASSES: dict[str, type[Task]] = {cls.name: cls for cls in (
    ShakespeareChar, TextFile, DigitsCNN, MatrixSensing, MatrixSensingAsym,
)}
#: the tasks a default suite runs (``text`` needs a file, so it runs only when asked for)
BUILTIN_TASKS: tuple[str, ...] = tuple(name for name in TASK_CLASSES if name != "text")


def make_task(text: str, **options) -> Task:
    """The task named ``text``: a built-in name, or ``text:PATH`` for a user's UTF-8 file."""
    name, sep, path = text.partition(":")
    if name == "text":
        if not sep or not path:
            raise ValueError("the text task needs a file: use --task text:PATH")
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"--task text: no such file: {path}")
        return TextFile(path=str(file.resolve()), **options)
    if sep or name not in TASK_CLASSES:
        raise ValueError(f"unknown task {text!r}; choose from {', '.join(BUILTIN_TASKS)} or text:PATH")
    return TASK_CLASSES[name](**options)


def task_from_spec(spec: dict) -> Task:
    """Rebuild a task from :meth:`Task.spec`'s JSON."""
    try:
        cls = TASK_CLASSES[spec["name"]]
    except KeyError:
        raise ValueError(f"unknown task {spec.get('name')!r} in a task spec") from None
    return cls(**spec.get("options", {}))


__all__ = ["BUDGETS", "BUILTIN_TASKS", "Budget", "TASK_CLASSES", "Task", "Trial", "lr_multiplier",
           "make_task", "task_from_spec"]
