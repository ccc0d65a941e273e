"""The one image decoder: a JPEG goes through libjpeg-turbo (simplejpeg) and must give exactly the
pixels OpenCV's decoder gives, turned upright by its EXIF orientation, at every reduction; what
simplejpeg refuses still decodes, or fails, as OpenCV decides (real LFW photos)."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from inference import faces
from jobs.core.errors import DataError

REDUCTIONS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def photo(lfw10) -> np.ndarray:
    """Four LFW photos side by side, cut to an odd size (997 x 247) so reduced sizes round."""
    people = sorted(p for p in lfw10.iterdir() if p.is_dir())[:4]
    row = np.hstack([cv2.imread(str(sorted(p.glob("*.jpg"))[0])) for p in people])
    return np.ascontiguousarray(row[:247, :997])


def jpeg(image: np.ndarray, **options) -> bytes:
    """``image`` (BGR) written by Pillow, which can set EXIF, progressive scans, subsampling and mode."""
    from PIL import Image

    mode = options.pop("mode", "RGB")
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).convert(mode).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def with_exif(image: np.ndarray, orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[faces.ORIENTATION_TAG] = orientation
    return jpeg(image, exif=exif.tobytes())


def opencv(data: bytes, reduce: int) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), getattr(cv2, faces.REDUCED[reduce]))


def assert_as_opencv(data: bytes) -> None:
    """simplejpeg decodes ``data`` (no fallback) to OpenCV's very pixels at every reduction."""
    for reduce in REDUCTIONS:
        assert faces._decode_jpeg(data, reduce) is not None, f"simplejpeg refused it at 1/{reduce}"
        ours, theirs = faces.decode_image(data, "photo.jpg", reduce), opencv(data, reduce)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), f"1/{reduce}: {ours.shape} {theirs.shape}"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_photo_as_opencv_does(photo, orientation):
    data = with_exif(photo, orientation)
    assert faces.jpeg_orientation(data) == orientation
    assert_as_opencv(data)
    assert faces.decode_image(data, "photo.jpg").shape[:2] == ((997, 247) if orientation >= 5 else (247, 997))


@pytest.mark.parametrize("options", [{"mode": "L"}, {"mode": "CMYK"}, {"progressive": True},
                                     {"subsampling": 0}, {"subsampling": 1}, {"subsampling": 2}],
                         ids=["grey", "cmyk", "progressive", "4:4:4", "4:2:2", "4:2:0"])
def test_other_kinds_of_jpeg_decode_as_opencv_does(photo, options):
    assert_as_opencv(jpeg(photo, **options))


def test_big_endian_exif_is_read():
    """Cameras write EXIF in either byte order ("MM" here, Pillow writes "II")."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    data = b"\xff\xd8\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + b"\xff\xda\x00\x02"
    assert faces.jpeg_orientation(data) == 8
    assert faces.jpeg_orientation(data[:20]) == 1  # a cut header is read as upright, never an error
    assert faces.jpeg_orientation(b"\x89PNG\r\n\x1a\n") == 1


def test_what_simplejpeg_refuses_is_left_to_opencv(lfw10):
    """A JPEG without its end marker (a cut upload, some cameras): libjpeg warns, simplejpeg
    refuses the stream, OpenCV decodes it, so faceops does too, with OpenCV's pixels; a stream
    cut in half fails as before."""
    data = sorted(lfw10.glob("*/*.jpg"))[0].read_bytes()
    unended = data[:-2]
    assert faces._decode_jpeg(unended, 1) is None
    assert np.array_equal(faces.decode_image(unended, "unended.jpg"), opencv(unended, 1))
    with pytest.raises(DataError, match="half.jpg: not a decodable image"):
        faces.decode_image(data[:len(data) // 2], "half.jpg")
