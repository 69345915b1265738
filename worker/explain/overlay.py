"""A heatmap as a person sees it: the film in grey, the map on it in colour, and a caption
that says what it is, burned into the pixels so that no viewer can drop it.

Pure pixel maths (arrays in, arrays out) except ``write_png``. The map is laid back onto the
film the way the learner's ``Resize`` took the film in (squish, centre crop or pad), so a
region of the map covers the region of the film the model saw there.

- **Size**: the decoded film, downscaled so its long side is at most ``max_side`` (1024).
- **Colour**: a perceptual colormap (``inferno``: dark to bright yellow, monotone in
  lightness, so it still reads in grey) as a 256-entry table applied with numpy. The table
  comes from matplotlib's colormap registry; pyplot is never imported.
- **Opacity**: 40% where the map is strongest, falling with the map to none where it is
  zero, so the film under a weak or empty map is left as it was.
- **Caption**: ``AI heatmap - not for diagnosis`` in white on a dark band added below the
  film (no film pixel is covered), its height 5% of the film's (at least 20 px).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION = "AI heatmap - not for diagnosis"
NO_REGION = "no region found"  # added to the caption when the map is empty
OPACITY = 0.4
COLORMAP = "inferno"
BAND_SHARE, BAND_MIN = 0.05, 20  # the caption band's height: share of the film's, and least px
BAND_COLOUR = (16, 16, 16)
TEXT_COLOUR = (255, 255, 255)


@cache
def colour_table(name: str = COLORMAP) -> np.ndarray:
    """256 x 3 uint8: a matplotlib colormap sampled at 256 levels (no pyplot)."""
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def fit(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """The grey film downscaled (area-averaging) so that its long side is at most ``max_side``."""
    h, w = pixels.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float map resized (bilinear) to ``shape`` (height, width)."""
    if heat.shape == shape:
        return heat.astype(np.float32)
    img = Image.fromarray(heat.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(img)


def onto_film(heat: np.ndarray, shape: tuple[int, int], method: str | None = "squish") -> np.ndarray:
    """The item-sized map over a film of ``shape`` (height, width), undoing the learner's
    ``Resize``: squish stretches it back; crop places it on the centre region the crop kept
    (zero elsewhere: the model never saw the rest); pad drops the padding's part of the map."""
    h, w = shape
    mh, mw = heat.shape
    if method == "crop":
        scale = min(h / mh, w / mw)  # the largest box of the map's shape inside the film
        bh, bw = round(mh * scale), round(mw * scale)
        top, left = (h - bh) // 2, (w - bw) // 2
        out = np.zeros(shape, np.float32)
        out[top : top + bh, left : left + bw] = resize_map(heat, (bh, bw))
        return out
    if method == "pad":
        scale = min(mh / h, mw / w)  # the film as it sat inside the padded item
        fh, fw = round(h * scale), round(w * scale)
        top, left = (mh - fh) // 2, (mw - fw) // 2
        return resize_map(heat[top : top + fh, left : left + fw], shape)
    return resize_map(heat, shape)


def blend(
    grey: np.ndarray, heat: np.ndarray, *, opacity: float = OPACITY, colormap: str = COLORMAP
) -> np.ndarray:
    """Grey film (H x W uint8) and a map of the same size in [0, 1] -> H x W x 3 uint8, the
    map's colour laid on with an opacity of ``opacity`` times the map."""
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    colour = colour_table(colormap)[np.round(heat * 255).astype(np.uint8)].astype(np.float32)
    alpha = (opacity * heat)[..., None]
    out = grey.astype(np.float32)[..., None] * (1 - alpha) + colour * alpha
    return np.round(out).astype(np.uint8)


def caption(rgb: np.ndarray, text: str = CAPTION) -> np.ndarray:
    """The image with a dark band added below it and ``text`` written on it in white."""
    h, w = rgb.shape[:2]
    band = max(BAND_MIN, round(h * BAND_SHARE))
    canvas = Image.new("RGB", (w, h + band), BAND_COLOUR)
    canvas.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    size = max(10, round(band * 0.6))
    font = ImageFont.load_default(size=size)
    while size > 8 and draw.textlength(text, font=font) > w - 2 * max(4, band // 4):
        size -= 1  # a narrow film: shrink the text until it fits
        font = ImageFont.load_default(size=size)
    draw.text((max(4, band // 4), h + band / 2), text, fill=TEXT_COLOUR, font=font, anchor="lm")
    return np.asarray(canvas)


def render(
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    resize_method: str | None = "squish",
    max_side: int = 1024,
    text: str = CAPTION,
) -> np.ndarray:
    """The decoded film (uint8 grey) and its item-sized map -> the captioned overlay (RGB)."""
    grey = fit(pixels, max_side)
    film_heat = onto_film(heat, grey.shape, resize_method)
    return caption(blend(grey, film_heat), text)


def write_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an overlay as PNG, atomically: a reader sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    Image.fromarray(rgb).save(partial, format="PNG", compress_level=3)
    partial.replace(path)
    return path
