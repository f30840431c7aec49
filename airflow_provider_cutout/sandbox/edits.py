"""Real, deterministic image edits with Pillow, and the sandbox's bundled sample images.

Prompt keywords pick operations (``KEYWORDS``); several sources are composed side by side first;
the result is cropped to the requested aspect ratio and encoded as PNG (same input, same bytes).
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from collections.abc import Callable
from functools import lru_cache

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Op = Callable[[Image.Image], Image.Image]

RATIOS: dict[str, tuple[int, int] | None] = {
    "original": None, "1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4), "9:16": (9, 16), "16:9": (16, 9),
}


def _sepia(img: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(img.convert("RGB"))
    toned = ImageOps.colorize(gray, black=(40, 26, 13), white=(255, 240, 196))
    return _keep_alpha(img, toned)


def _keep_alpha(src: Image.Image, out: Image.Image) -> Image.Image:
    if src.mode == "RGBA":
        out = out.convert("RGBA")
        out.putalpha(src.getchannel("A"))
    return out


def _rgb_op(func: Op) -> Op:
    return lambda img: _keep_alpha(img, func(img.convert("RGB")))


def _background_mask(img: Image.Image, tolerance: int = 48) -> Image.Image:
    """Mask (255 = background) of pixels close to the colour of the image's corners."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    corners = [rgb.getpixel(p) for p in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]
    ref = tuple(sorted(c[i] for c in corners)[1] for i in range(3))  # type: ignore[index]
    bands = [
        band.point(lambda v, r=r: 255 if abs(v - r) <= tolerance else 0)
        for band, r in zip(rgb.split(), ref, strict=True)
    ]
    mask = bands[0]
    for band in bands[1:]:
        mask = Image.composite(band, Image.new("L", rgb.size, 0), mask)
    return mask


def _remove_background(img: Image.Image) -> Image.Image:
    out = img.convert("RGBA")
    alpha = out.getchannel("A")
    out.putalpha(Image.composite(Image.new("L", out.size, 0), alpha, _background_mask(img)))
    return out


def _white_background(img: Image.Image) -> Image.Image:
    rgb = img.convert("RGB")
    return Image.composite(Image.new("RGB", rgb.size, (255, 255, 255)), rgb, _background_mask(img))


#: Keyword (regular expression on the lower-cased prompt) -> (operation name, operation).
def _grayscale(img: Image.Image) -> Image.Image:
    return _keep_alpha(img, ImageOps.grayscale(img.convert("RGB")).convert("RGB"))


def _brightness(factor: float) -> Op:
    return lambda img: _keep_alpha(img, ImageEnhance.Brightness(img.convert("RGB")).enhance(factor))


KEYWORDS: list[tuple[str, str, Op]] = [
    (r"remove (the )?background|transparent|cut ?out", "remove_background", _remove_background),
    (r"white background", "white_background", _white_background),
    (r"gr[ae]yscale|black and white|\bgr[ae]y\b", "grayscale", _grayscale),
    (r"sepia|vintage", "sepia", _sepia),
    (r"invert|negative", "invert", _rgb_op(ImageOps.invert)),
    (r"blur", "blur", lambda i: i.filter(ImageFilter.GaussianBlur(4))),
    (r"sharpen", "sharpen", lambda i: i.filter(ImageFilter.SHARPEN)),
    (r"mirror|flip", "mirror", ImageOps.mirror),
    (r"rotate", "rotate", lambda i: i.rotate(90, expand=True)),
    (r"brighten|brighter|lighten", "brighten", _brightness(1.4)),
    (r"darken|darker", "darken", _brightness(0.6)),
]


def operations_for(prompt: str) -> list[tuple[str, Op]]:
    """Operations a prompt asks for, in the order their keywords appear in it."""
    text = prompt.lower()
    found = []
    for pattern, name, op in KEYWORDS:
        match = re.search(pattern, text)
        if match:
            found.append((match.start(), name, op))
    return [(name, op) for _, name, op in sorted(found, key=lambda item: item[0])]


def compose(images: list[Image.Image]) -> Image.Image:
    """Place several sources side by side at the height of the first one."""
    if len(images) == 1:
        return images[0]
    height = images[0].height
    scaled = [img.resize((max(1, round(img.width * height / img.height)), height)) for img in images]
    mode = "RGBA" if any(img.mode == "RGBA" for img in scaled) else "RGB"
    canvas = Image.new(mode, (sum(img.width for img in scaled), height), (255, 255, 255))
    x = 0
    for img in scaled:
        canvas.paste(img.convert(mode), (x, 0))
        x += img.width
    return canvas


def crop_to_ratio(img: Image.Image, ratio: str) -> Image.Image:
    """Centre-crop to ``ratio`` (``original`` keeps the image as it is)."""
    target = RATIOS[ratio]
    if target is None:
        return img
    rw, rh = target
    w, h = img.size
    if w * rh > h * rw:  # too wide
        new_w, new_h = max(1, round(h * rw / rh)), h
    else:
        new_w, new_h = w, max(1, round(w * rh / rw))
    left, top = (w - new_w) // 2, (h - new_h) // 2
    return img.crop((left, top, left + new_w, top + new_h))


def edit(sources: list[Image.Image], prompt: str, ratio: str) -> tuple[bytes, list[str]]:
    """Run an edit; return the PNG bytes and the names of the operations applied."""
    img = compose([s.convert("RGBA") if s.mode in ("RGBA", "LA", "P") else s.convert("RGB") for s in sources])
    ops = operations_for(prompt)
    for _, op in ops:
        img = op(img)
    img = crop_to_ratio(img, ratio)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=1)
    return out.getvalue(), [name for name, _ in ops]


SAMPLE_COLOURS = {
    "mug": ((235, 235, 240), (200, 60, 50)),
    "sneaker": ((245, 240, 230), (40, 90, 180)),
    "lamp": ((230, 240, 235), (220, 170, 40)),
    "chair": ((240, 235, 245), (90, 140, 80)),
    "bottle": ((238, 238, 238), (30, 150, 160)),
    "watch": ((250, 245, 240), (60, 60, 70)),
}


SAMPLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHAPES = ("mug", "watch", "chair")


def sample_colours(name: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The backdrop and object colours of a sample: the six named ones, or any other name's own, derived from
    its hash (so ``sku-0001`` to ``sku-9999`` are as many distinct, repeatable photos)."""
    if name in SAMPLE_COLOURS:
        return SAMPLE_COLOURS[name]
    d = hashlib.sha256(name.encode()).digest()
    return (225 + d[0] % 30, 225 + d[1] % 30, 225 + d[2] % 30), (d[3] % 200, d[4] % 200, d[5] % 200)


def is_sample_file(name: str) -> bool:
    """Whether ``name`` (``sku-0007.png``) is a sample's file name: a sample name with ``.png`` or ``.jpg``."""
    stem, _, ext = name.partition(".")
    return bool(SAMPLE_NAME.fullmatch(stem)) and ext in ("png", "jpg")


def photo_key(name: str, query: dict[str, list[str]]) -> str:
    """Which photo a sample URL shows: its file name and its ``w`` and ``h`` (what ``/__sandbox__/photos``
    replaces); other query parameters do not change it."""
    return f"{name}?w={query.get('w', ['1280'])[0]}&h={query.get('h', ['960'])[0]}"


@lru_cache(maxsize=64)
def sample_image(name: str, width: int = 1280, height: int = 960, fmt: str = "png", version: int = 1,
                 grain: bool = False) -> bytes:
    """A synthetic product photo: a plain backdrop and a coloured object (deterministic); a ``version``
    above 1 adds a mark in a corner, as a photo replaced under the same URL. With ``grain``, the top rows are
    noise (a PNG of more than 128 KiB) and the mark is in the bottom corner: a replacement changes only bytes
    far into the file."""
    background, colour = sample_colours(name)
    if name not in SAMPLE_COLOURS:  # a generated photo: its shape from its name too
        name = _SHAPES[hashlib.sha256(name.encode()).digest()[6] % len(_SHAPES)]
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    cx, cy, r = width // 2, height // 2, max(2, min(width, height) // 3)
    if name in ("mug", "bottle", "lamp"):
        draw.rounded_rectangle((cx - r // 2, cy - r, cx + r // 2, cy + r), radius=max(1, r // 6), fill=colour)
    elif name == "watch":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx - r, cy + r), (cx + r, cy + r), (cx, cy - r)], fill=colour)
    draw.rectangle((cx - r // 4, cy - r // 8, cx + r // 4, cy + r // 8), fill=(250, 250, 250))
    if grain:
        rows = min(height // 4, 1 + 160 * 1024 // (3 * width))
        img.paste(Image.frombytes("RGB", (width, rows), random.Random(name).randbytes(3 * width * rows)), (0, 0))
    if version > 1:
        corner = (width - max(1, width // 8), height - max(1, height // 8)) if grain else (0, 0)
        draw.rectangle((*corner, corner[0] + max(1, width // 8), corner[1] + max(1, height // 8)),
                       fill=((version * 67) % 256, 40, 90))
    out = io.BytesIO()
    img.save(out, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG", quality=90)
    return out.getvalue()
