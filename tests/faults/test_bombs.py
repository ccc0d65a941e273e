"""Item 7 of the second fault run: bombs. A model archive that unpacks to far more than it
weighs is refused from its tar headers before a byte is written (FACEOPS_ARCHIVE_MAX_RATIO,
FACEOPS_ARCHIVE_MAX_BYTES), and an enormous photo is refused from its header before decoding."""
from __future__ import annotations

import io
import struct
import tarfile
import zlib

from jobs.core.contract import Contract
from jobs.store import Store, workdir
from tests.faults.helpers import cli, custom_job

UNPACKED = 64 * 1024 * 1024


class _Zeros(io.RawIOBase):
    """``size`` zero bytes read in chunks, so the archive is made without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def _zero_bomb(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.params")
        info.size = UNPACKED
        tar.addfile(info, io.BufferedReader(_Zeros(UNPACKED)))


def test_a_model_archive_bomb_is_refused_before_extraction(tmp_path):
    bomb = tmp_path / "given" / "model.tar.gz"
    _zero_bomb(bomb)
    spec = custom_job(tmp_path / "proj", extra=f"inputs:\n  model: {bomb.parent}\n")
    result = cli("job", "submit", str(spec))
    assert result.returncode == 1, result.stderr
    record = Store().get("fault-job", 1)
    assert record["status"] == "failed" and "decompression bomb" in record["failure_reason"], record["failure_reason"]
    channel = Contract(workdir(record), channels=["model"]).channel_dir("model")
    assert (channel / "model.tar.gz").is_file() and not (channel / "model.params").exists(), "a partial extraction was left"
    # the same archive within a raised limit unpacks as before
    allowed = cli("job", "submit", str(spec), env={"FACEOPS_ARCHIVE_MAX_RATIO": "100000"})
    assert allowed.returncode == 0, allowed.stderr


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (its pixel data is a few rows): decoding
    it would allocate for the claim, so only a check of the header keeps memory flat."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_an_enormous_photo_is_refused_from_its_header(tmp_path, lfw10):
    src = tmp_path / "src"
    for n, person in enumerate(sorted(p for p in lfw10.iterdir() if p.is_dir())[:2]):
        (src / person.name).mkdir(parents=True)
        for photo in sorted(person.glob("*.jpg"))[:2]:
            (src / person.name / photo.name).symlink_to(photo)
    big = src / sorted(p.name for p in src.iterdir())[0] / "huge.png"
    big.write_bytes(_png_header_claiming(30000, 30000))
    result = cli("data", "pack-recognition", str(src), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "packed 4 images" in result.stdout + result.stderr
    assert f"{big}: 30000x30000 is 900000000 pixels to decode, over the" in result.stdout + result.stderr
