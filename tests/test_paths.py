"""fastrnn.paths.open_regular_file: regular files only, refused without blocking otherwise."""

import os

import pytest

from fastrnn.paths import open_regular_file


def test_a_regular_file_opens_with_its_size(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"0123456789")
    file, size = open_regular_file(path, "model file")
    with file:
        assert size == 10 and file.read() == b"0123456789"


def test_missing_file_directory_and_fifo_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        open_regular_file(tmp_path / "absent", "model file")
    with pytest.raises(ValueError, match="is a directory, not an ONNX file"):
        open_regular_file(tmp_path, "ONNX file")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # No writer: a blocking open would wait forever; this one is refused at once.
    with pytest.raises(ValueError, match="not a regular file"):
        open_regular_file(fifo, "ONNX file")
