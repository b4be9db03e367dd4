"""Reading a stored file: a signature taken when it was hashed spares the worker a second hash
only while the file is unchanged."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from model.errors import DecodeError
from model.files import COARSE_STEP_NS, FINE_STEP_NS, read_file, settled_signature

LATER = 5_000_000_000  # "now" five seconds after the file was written: it has settled


def _stat(mtime_ns: int, ctime_ns: int) -> os.stat_result:
    return os.stat_result(
        (0o100644, 7, 1, 1, 0, 0, 10, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime_ns, ctime_ns)
    )


def _settled(path: Path) -> str:
    signature = settled_signature(os.stat(path), time.time_ns() + LATER)
    assert signature is not None
    return signature


def test_no_signature_while_the_last_change_may_share_a_step_with_a_write_made_now() -> None:
    changed = 1_700_000_000_123_456_789  # fine stamps
    fine = _stat(changed - 10**9, changed)  # the change time counts as much as the content's
    assert settled_signature(fine, changed + FINE_STEP_NS - 1) is None
    assert settled_signature(fine, changed + FINE_STEP_NS) is not None
    whole = 1_700_000_000_000_000_000  # whole seconds: a coarse file system (FAT, some shares)
    coarse = _stat(whole, whole)
    assert settled_signature(coarse, whole + FINE_STEP_NS) is None
    assert settled_signature(coarse, whole + COARSE_STEP_NS) is not None


def test_a_file_that_kept_its_signature_is_not_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"registered bytes")
    signature = _settled(path)
    # A wrong sha256 passes: the signature vouches for the hash taken when it was registered.
    assert read_file(path, sha256="0" * 64, signature=signature) == b"registered bytes"
    with pytest.raises(DecodeError, match="contents changed"):
        read_file(path, sha256="0" * 64)  # without it the file is hashed


@pytest.mark.parametrize("how", ["rewritten in place", "times put back", "another file moved in"])
def test_a_file_changed_after_its_signature_was_taken_is_hashed_and_refused(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"registered bytes")
    sha256 = hashlib.sha256(b"registered bytes").hexdigest()
    before = os.stat(path)
    signature = _settled(path)
    if how == "another file moved in":
        (tmp_path / "other").write_bytes(b"different bytes!")  # same size
        os.replace(tmp_path / "other", path)
    else:
        with path.open("r+b") as handle:  # same size, same inode
            handle.write(b"REGISTERED")
        if how == "times put back":
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    with pytest.raises(DecodeError, match="replaced after it was registered"):
        read_file(path, sha256=sha256, signature=signature)


def test_a_file_whose_signature_went_stale_is_still_read_when_its_bytes_are_the_same(
    tmp_path: Path,
) -> None:
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"registered bytes")
    signature = _settled(path)
    os.utime(path)  # touched: times changed, bytes did not
    sha256 = hashlib.sha256(b"registered bytes").hexdigest()
    assert read_file(path, sha256=sha256, signature=signature) == b"registered bytes"
