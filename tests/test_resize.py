import numpy as np
import pytest

from tests.images import encode, photo, psnr, reference_resize
from tools.resize import DecodeError, center_box, decode_rgb, process, resize_center


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (640, 480), (1600, 1200), (180, 120), (1200, 150)])
def test_resize_matches_naive_full_size_bicubic(size):
    """Draft decoding and the box resize change nothing visible (before the JPEG re-encode)."""
    data = encode(photo(*size))
    im, w, h = decode_rgb(data)
    assert (w, h) == size
    ours = np.asarray(resize_center(im))
    assert ours.shape == (256, 256, 3)
    assert psnr(ours, reference_resize(data)) > 35  # the target of the issue; measured 37-48 dB


def test_stored_jpeg_is_the_resized_image_and_its_pixels():
    data = encode(photo(500, 375))
    out = process(data, quality=90)
    im, _, _ = decode_rgb(data)
    assert out.pixels.shape == (256, 256, 3) and (out.width, out.height) == (500, 375)
    assert psnr(out.pixels, np.asarray(resize_center(im))) > 30
    assert out.jpeg[:2] == b"\xff\xd8"


def test_center_box_keeps_the_central_square():
    assert center_box(512, 256) == (128.0, 0.0, 384.0, 256.0)
    left, top, right, bottom = center_box(300, 900)
    assert (left, right) == (0.0, 300.0) and abs((bottom - top) - 300) < 1e-9 and abs(top - 300) < 2


def test_cmyk_and_grayscale_and_png_named_jpeg_come_out_rgb_and_right():
    rgb = photo(400, 300, seed=1)
    ref = reference_resize(encode(rgb))
    cmyk = process(encode(rgb, mode="CMYK"))
    assert psnr(cmyk.pixels, ref) > 30  # colours survive the CMYK round trip
    gray = process(encode(rgb, mode="L"))
    assert np.array_equal(gray.pixels[..., 0], gray.pixels[..., 1])  # three equal channels
    png = process(encode(rgb, fmt="PNG"))
    assert psnr(png.pixels, ref) > 35


def test_truncated_jpeg_and_non_images_are_refused():
    data = encode(photo(500, 375))
    with pytest.raises(DecodeError):
        decode_rgb(data[: len(data) * 6 // 10])
    with pytest.raises(DecodeError):
        decode_rgb(b"<html>not an image</html>")


def test_draft_decodes_large_jpegs_below_full_size_but_never_below_256():
    im, w, h = decode_rgb(encode(photo(2048, 1536)))
    assert (w, h) == (2048, 1536)
    assert min(im.size) >= 256 and im.size[0] < 2048
