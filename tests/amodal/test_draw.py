"""Drawing results onto frames (the annotated video and the live view): only the pixels of each object's masks,
box and label change; visible masks are blended, amodal outlines take the track's colour exactly — also where an
object touches the frame's edge — and occluders are striped."""
from __future__ import annotations

import numpy as np

from amodal.draw import colour_of, draw_result
from amodal.types import FrameResult, ObjectResult, RLEMask
from amodal.world.render import outline


def _mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_masks_outlines_and_stripes_land_where_the_masks_are():
    h, w = 90, 120
    image = np.full((h, w, 3), 100, np.uint8)
    visible = _mask(h, w, 0, 30, 50, 70)  # touches the top edge of the frame
    amodal = _mask(h, w, 0, 50, 45, 75)
    occluder = _mask(h, w, 30, 50, 40, 80)
    # boxes and labels drawn away from the masks, so the mask pixels are checked alone
    obj = ObjectResult(1, "person", 0.9, (2.0, 76.0, 20.0, 88.0), mask=RLEMask.encode(visible), track_id=3,
                       amodal_mask=RLEMask.encode(amodal), occluder_mask=RLEMask.encode(occluder))
    far = ObjectResult(2, "car", 0.8, (100.0, 55.0, 110.0, 62.0), mask=RLEMask.encode(_mask(h, w, 55, 62, 100, 110)))
    out = draw_result(image, FrameResult("s", 0, 0.0, 0, w, h, (obj, far), "test"))
    colour = np.array(colour_of(obj))
    edge = outline(amodal)
    assert edge[0, 45] and (out[edge] == colour).all()  # the outline, the frame's top row included
    inside = visible & ~edge
    expected = np.floor(0.55 * 100 + 0.45 * colour)
    assert (np.abs(out[inside].astype(int) - expected) <= 1).all()  # blended fill
    stripes = ((np.arange(h)[:, None] + np.arange(w)[None, :]) % 6) < 2
    striped = occluder & stripes & ~amodal
    plain = occluder & ~stripes & ~amodal
    assert (out[striped] < 100).all() and (out[plain] == 100).all()
    untouched = np.ones((h, w), bool)
    untouched[0:52, 38:82] = False  # around the first object
    untouched[41:64, 98:] = False  # around the second, its box and label
    untouched[62:, :] = False  # the first one's box and label
    assert (out[untouched] == 100).all()


def test_masks_of_another_size_and_empty_masks_are_skipped():
    image = np.zeros((40, 50, 3), np.uint8)
    wrong = ObjectResult(1, "x", 0.5, (0.0, 0.0, 1.0, 1.0), mask=RLEMask.encode(np.ones((10, 10), bool)))
    empty = ObjectResult(1, "x", 0.5, (0.0, 0.0, 1.0, 1.0), mask=RLEMask.encode(np.zeros((40, 50), bool)))
    out = draw_result(image, FrameResult("s", 0, 0.0, 0, 50, 40, (wrong, empty), "test"))
    assert out.shape == image.shape and out[20:, :].max() == 0
