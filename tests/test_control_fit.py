"""A control map made and fitted as A1111's ControlNet extension does it (data/control/fit.py): the processor
resolution, the three resize modes, pixel perfect, and the high-quality resize that keeps canny's lines one pixel."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from personae.data.control.fit import fit_map, pixel_perfect_res, processor_input, thin_lines

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(width=80, height=40):
    """Three vertical bands, a quarter red, half green, a quarter blue (three colours: resized nearest)."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 4], a[:, width // 4: 3 * width // 4], a[:, 3 * width // 4:] = RED, GREEN, BLUE
    return Image.fromarray(a)


def _columns(image):
    """The colour of each column of a band picture (asserting each column is one colour)."""
    a = np.asarray(image)
    assert (a == a[:1]).all(), "a band picture has one colour per column"
    return [tuple(int(v) for v in c) for c in a[0]]


def test_just_resize_stretches_every_band():
    fitted = fit_map(_bands(), (40, 40), "Just Resize")
    assert fitted.size == (40, 40)
    assert _columns(fitted) == [RED] * 10 + [GREEN] * 20 + [BLUE] * 10


def test_crop_and_resize_covers_the_picture_and_keeps_the_middle():
    fitted = fit_map(_bands(), (40, 40), "Crop and Resize")  # 80x40 at scale 1, columns 20..59 kept
    assert fitted.size == (40, 40) and _columns(fitted) == [GREEN] * 40
    wide = fit_map(_bands(80, 40), (60, 20), "Crop and Resize")  # scale max(20/40, 60/80) = 0.75: 60x30, rows 5..24
    assert wide.size == (60, 20) and _columns(wide) == [RED] * 15 + [GREEN] * 30 + [BLUE] * 15


def test_resize_and_fill_fits_inside_and_fills_with_the_border_median():
    source = np.asarray(_bands())
    border = np.concatenate([source[0], source[-1], source[:, 0], source[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))  # (0, 255, 0): the green half dominates the border
    fitted = np.asarray(fit_map(_bands(), (40, 40), "Resize and Fill"))  # scale 0.5: 40x20 from row 10
    assert fitted.shape == (40, 40, 3)
    assert (fitted[:10] == fill).all() and (fitted[30:] == fill).all()
    assert _columns(Image.fromarray(fitted[10:30])) == [RED] * 10 + [GREEN] * 20 + [BLUE] * 10
    with pytest.raises(ValueError, match="resize mode"):
        fit_map(_bands(), (40, 40), "Envelope")


def test_processor_input_scales_the_short_side_and_pads_to_64():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (333, 250, 3), dtype=np.uint8))
    padded, unpad = processor_input(photo, 512)  # 512 / 250 = 2.048: 512 x 682, padded to 512 x 704
    assert padded.shape == (704, 512, 3)
    assert (padded[682:] == padded[681]).all()  # the padding repeats the last row
    assert unpad(padded).shape == (682, 512, 3)
    small, unpad = processor_input(photo, 125)  # shrinking by area averaging: 333 x 0.5 = 166.5, rounded half to
    assert small.shape == (192, 128, 3) and unpad(small).shape == (166, 125, 3)  # even (numpy's round) as A1111's
    # area averaging keeps the photo's mean where cubic would not be asked to
    assert abs(float(unpad(small).mean()) - float(np.asarray(photo).mean())) < 1.5


def test_pixel_perfect_resolution():
    assert pixel_perfect_res((1000, 500), (512, 512), "Crop and Resize") == 512  # the short side covers 512
    assert pixel_perfect_res((1000, 500), (512, 512), "Just Resize") == 512
    assert pixel_perfect_res((1000, 500), (512, 512), "Resize and Fill") == 256  # the long side fits 512
    assert pixel_perfect_res((512, 768), (768, 512), "Crop and Resize") == 768


def _circle_edges(size=64, radius=20):
    import cv2

    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).ellipse([size / 2 - radius, size / 2 - radius, size / 2 + radius, size / 2 + radius],
                                  fill=255)
    edges = cv2.Canny(np.asarray(image), 100, 200)
    return np.repeat(edges[:, :, None], 3, axis=2)


def test_thinning_takes_a_thick_line_to_one_pixel():
    bar = np.zeros((20, 40), np.uint8)
    bar[9:12, 5:35] = 255  # three pixels thick
    thin = thin_lines(bar, prune=False)
    assert set(np.unique(thin)) == {0, 255}
    assert (np.count_nonzero(thin[:, 10:30], axis=0) == 1).all()  # one pixel thick along the middle
    line = np.zeros((20, 40), np.uint8)
    line[10, 5:35] = 255
    assert (thin_lines(line, prune=False) == line).all()  # already one pixel: unchanged


def test_canny_lines_stay_one_pixel_when_the_map_is_enlarged():
    edges = _circle_edges()
    fitted = np.asarray(fit_map(edges, (128, 128), "Just Resize"))[:, :, 0]
    assert set(np.unique(fitted)) == {0, 255}  # thresholded back to black and white
    white = fitted > 127
    assert not (white[:-1, :-1] & white[1:, :-1] & white[:-1, 1:] & white[1:, 1:]).any()  # no 2x2 block: thin
    ys, xs = np.nonzero(white)
    radius = np.hypot(xs - 63.5, ys - 63.5)
    assert abs(np.median(radius) - 40) < 2 and radius.min() > 36 and radius.max() < 44  # the circle, twice as big
    # a plain cubic resize, which A1111 does not keep, would smear the lines over two or three pixels
    import cv2

    smeared = cv2.resize(edges, (128, 128), interpolation=cv2.INTER_CUBIC)[:, :, 0] > 127
    assert (smeared[:-1, :-1] & smeared[1:, :-1] & smeared[:-1, 1:] & smeared[1:, 1:]).any()


def test_a_map_of_many_colours_is_resized_smoothly():
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3))
    fitted = np.asarray(fit_map(gradient, (32, 32), "Just Resize"))[0, :, 0].astype(int)
    assert (np.diff(fitted) >= 0).all() and fitted[0] < 8 and fitted[-1] > 247  # area averaging, no banding


def test_a_map_already_the_right_size_is_passed_through_untouched():
    """A black-and-white line map at the picture's size is not thinned or thresholded: the extension (and diffusers
    with a map of the right size) use it as it is, so personae's picture matches a plain diffusers run."""
    bar = np.zeros((32, 32, 3), np.uint8)
    bar[8:24, 10:12] = 255  # a line two pixels wide: read as one-pixel edges, which a resize thins to one
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        assert (np.asarray(fit_map(bar, (32, 32), mode)) == bar).all(), mode
    grown = np.asarray(fit_map(bar, (64, 64), "Just Resize"))[:, :, 0]
    assert 0 < np.count_nonzero(grown) <= 32 * 2  # resized: the line, thinned (a plain resize would be 4 wide: 128)
