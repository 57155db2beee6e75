"""Opening files that fastrnn reads models from: regular files only, checked without blocking."""

import os
import stat
from typing import BinaryIO


def open_regular_file(path: str | os.PathLike, what: str) -> tuple[BinaryIO, int]:
    """(binary file open for reading, its size in bytes) for the regular file at `path`.

    Checked on the open file descriptor (no race between the check and the read), opened without
    blocking: a FIFO is refused at once instead of waiting for a writer, and a device such as
    /dev/zero or a socket is refused before anything is read from it. `what` names the file in
    the errors ("ONNX file", "model file"): FileNotFoundError if there is none, ValueError for a
    directory or anything that is not a regular file, the OSError's own kind otherwise.
    """
    path = os.fspath(path)
    article = "an" if what[:1].lower() in "aeiou" else "a"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path!r}") from None
    except IsADirectoryError:
        raise ValueError(f"{path!r} is a directory, not {article} {what}") from None
    except OSError as error:
        raise type(error)(error.errno, f"cannot read {what} {path!r}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{path!r} is a directory, not {article} {what}")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path!r} is not a regular file (a device, FIFO or socket); "
                             f"fastrnn reads {what}s from regular files only")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise
