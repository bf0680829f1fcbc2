"""The built-in offline dataset ``scenes``: a closed fence and three dots; the class is how many dots are inside.

Every image holds the same parts: one closed outline (a circle, square or hexagon of random size, position,
rotation, line width and colour) and three dots (random colours), on a tinted, shaded background with grey
clutter strokes and pixel noise. Only the arrangement changes from class to class: none, one, two or all three
dots lie inside the fence. Every dot keeps a clearance from the fence line, so up close a dot inside looks like
a dot outside; a network whose features see a few pixels around a dot and are then averaged over the image
cannot tell the classes apart, and only layers that see a dot together with the fence around it can. The fence
and the dot size are drawn the same way in every class (a fence is kept only if it leaves room for every
class), and so are colours and the amount of ink, so no global colour or edge statistic gives the class away.

Labels do not change under horizontal flips or small shifts. The dots keep a margin of an eighth of the image
(the trainer's largest shift), so its reflect-padded shifts never mirror a copy of a dot into the image; they
may mirror a sliver of a fence that runs close to the edge, which leaves every dot where it was, inside or
out. Each split and class is drawn from its own stream seeded by ``(seed, split, class)``, so the splits are
disjoint and the same seed gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layercut.stages.data.types import SPLITS

SCENE_CLASSES: tuple[str, ...] = ("none-inside", "one-inside", "two-inside", "three-inside")
FENCES: dict[str, int] = {"circle": 0, "square": 4, "hexagon": 6}  # outline → sides (0: round)
NATIVE_SIZE = 64
IMAGES_PER_CLASS: dict[str, int] = {"train": 1000, "val": 150, "test": 150}
EDGE_GAP = 1.0  # native pixels between the fence and the image's edge
DOT_MARGIN = 1 / 8  # fraction of the image between a dot and the edge: the trainer's largest shift
DOTS = 3
FENCE_RADIUS = (15.0, 19.0)  # radius of the circle with the fence's area, native pixels
FENCE_HALF_WIDTH = (1.0, 1.6)
DOT_RADIUS = (2.5, 3.0)
DOT_CLEARANCE = 5.0  # free pixels between a dot's edge and the fence line
DOT_SEPARATION = 8.0  # least distance between two dots' centres
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (240, 200, 30),
    (40, 170, 60),
    (40, 190, 220),
    (50, 70, 220),
    (200, 60, 200),
)
CLUTTER_RANGE = (3, 7)  # thin grey strokes per image
PIXEL_NOISE = 6.0  # standard deviation of the per-pixel noise, in 0..255 units
STREAM = 0x5CE7E5  # keeps these streams apart from other seeded draws that use the same seed


@dataclass
class SceneImages:
    """Native-size RGB images per split (uint8, (N, 3, S, S)), their labels and synthetic source ids."""

    classes: list[str]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    sources: dict[str, list[str]]


@dataclass
class Fence:
    """A closed outline: its kind, centre, equal-area radius, rotation and half line width (native pixels)."""

    kind: str
    centre: tuple[float, float]
    radius: float
    angle: float
    half_width: float

    @property
    def apothem(self) -> float:
        """Distance from the centre to the middle of a side (the radius itself for a circle)."""
        sides = FENCES[self.kind]
        if sides == 0:
            return self.radius
        return self.radius * float(np.sqrt(np.pi / (sides * np.tan(np.pi / sides))))

    @property
    def extent(self) -> float:
        """Distance from the centre to the outer edge of the line at its farthest point."""
        sides = FENCES[self.kind]
        corner = self.apothem if sides == 0 else self.apothem / np.cos(np.pi / sides)
        return float(corner + self.half_width)

    def signed_distance(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Approximate signed distance to the outline's centre line (negative inside), at offsets from the centre."""
        sides = FENCES[self.kind]
        if sides == 0:
            return np.hypot(dy, dx) - self.radius
        faces = [
            np.cos(self.angle + k * 2 * np.pi / sides) * dx + np.sin(self.angle + k * 2 * np.pi / sides) * dy
            for k in range(sides)
        ]
        return np.max(faces, axis=0) - self.apothem


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A greyish, tinted background with a random gradient and low-frequency blotches, (S, S, 3) float."""
    axis = np.arange(size, dtype=np.float64)
    level = rng.uniform(70.0, 180.0)
    tint = rng.uniform(-20.0, 20.0, size=3)
    angle, slope = rng.uniform(0.0, 2 * np.pi), rng.uniform(-25.0, 25.0) / size
    shade = np.add.outer(slope * np.sin(angle) * axis, slope * np.cos(angle) * axis)
    waves = rng.uniform((0.5, 0.0, 0.0, 3.0), (2.5, 2 * np.pi, 2 * np.pi, 10.0), size=(3, 4))
    for cycles, angle, phase, amplitude in waves.tolist():  # plane waves as sums of outer products (cheaper)
        frequency = cycles * 2 * np.pi / size
        row = frequency * np.sin(angle) * axis + phase
        column = frequency * np.cos(angle) * axis
        shade += amplitude * (np.outer(np.sin(row), np.cos(column)) + np.outer(np.cos(row), np.sin(column)))
    return (level + tint) + shade[..., None] * rng.uniform(0.7, 1.0, size=3)


def window(centre: tuple[float, float], reach: float, size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The pixels within ``reach`` of ``centre`` (clipped to the image): their slices and their offsets from the
    centre, as a column of row offsets and a row of column offsets (they broadcast to the window)."""
    top, bottom = max(0, int(centre[0] - reach - 1)), min(size, int(centre[0] + reach + 2))
    left, right = max(0, int(centre[1] - reach - 1)), min(size, int(centre[1] + reach + 2))
    dy = np.arange(top, bottom, dtype=np.float64)[:, None] - centre[0]
    dx = np.arange(left, right, dtype=np.float64)[None, :] - centre[1]
    return (slice(top, bottom), slice(left, right)), dy, dx


def paint(image: np.ndarray, box: tuple[slice, slice], distance: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` (a colour or per-pixel colours) into ``image[box]`` where ``distance`` < 0, antialiased."""
    cover = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
    image[box] = image[box] * (1.0 - cover) + cover * colour


def add_clutter(image: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a few thin short grey strokes anywhere, in place: edges that belong to no object."""
    size = image.shape[0]
    count = int(rng.integers(CLUTTER_RANGE[0], CLUTTER_RANGE[1] + 1))
    strokes = rng.uniform((0.0, 0.0, 0.0, 2.0, 20.0), (size, size, np.pi, 5.0, 235.0), size=(count, 5))
    for y, x, angle, half, grey in strokes.tolist():
        half *= size / NATIVE_SIZE
        box, dy, dx = window((y, x), half + 1.0, size)
        u = np.cos(angle) * dx + np.sin(angle) * dy
        v = -np.sin(angle) * dx + np.cos(angle) * dy
        paint(image, box, np.maximum(np.abs(u) - half, np.abs(v) - 0.5), grey)


def draw_fence(rng: np.random.Generator, size: int) -> Fence:
    """A fence of random kind, size, rotation and width, placed anywhere it lies wholly inside the image."""
    scale = size / NATIVE_SIZE
    kind = list(FENCES)[int(rng.integers(len(FENCES)))]
    fence = Fence(
        kind=kind,
        centre=(0.0, 0.0),
        radius=rng.uniform(*FENCE_RADIUS) * scale,
        angle=rng.uniform(0.0, 2 * np.pi),
        half_width=rng.uniform(*FENCE_HALF_WIDTH) * scale,
    )
    gap = EDGE_GAP * scale
    low, high = gap + fence.extent, size - 1.0 - gap - fence.extent
    fence.centre = (float(rng.uniform(low, high)), float(rng.uniform(low, high)))
    return fence


def separated_dots(rng: np.random.Generator, pool: np.ndarray, separation: float) -> list[tuple[float, float]]:
    """Up to ``DOTS`` centres from ``pool`` in random order, each at least ``separation`` from those before."""
    chosen: list[tuple[float, float]] = []
    for y, x in rng.permutation(pool).tolist():
        if all(math.hypot(y - cy, x - cx) >= separation for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == DOTS:
                break
    return chosen


def dot_places(rng: np.random.Generator, fence: Fence, dot_radius: float, size: int) -> tuple[list, list] | None:
    """``DOTS`` places for a dot inside the fence and ``DOTS`` outside it, clear of the line and of each other.

    Both lists must be full whatever the class, so that the fence and dot size are drawn alike in every class;
    None when this fence leaves no room for that (the caller then draws another).
    """
    scale = size / NATIVE_SIZE
    low, high = DOT_MARGIN * size + dot_radius, size - 1.0 - DOT_MARGIN * size - dot_radius
    candidates = rng.uniform(low, high, size=(192, 2))
    distance = fence.signed_distance(candidates[:, 0] - fence.centre[0], candidates[:, 1] - fence.centre[1])
    clearance = fence.half_width + dot_radius + DOT_CLEARANCE * scale
    separation = DOT_SEPARATION * scale
    inside = separated_dots(rng, candidates[distance < -clearance], separation)
    outside = separated_dots(rng, candidates[distance > clearance], separation)
    if len(inside) < DOTS or len(outside) < DOTS:
        return None
    return inside, outside


def palette_colour(rng: np.random.Generator) -> np.ndarray:
    """A palette colour, slightly darker or brighter."""
    return np.asarray(PALETTE[int(rng.integers(len(PALETTE)))], dtype=np.float64) * rng.uniform(0.8, 1.1)


def draw_scene(rng: np.random.Generator, inside: int, size: int = NATIVE_SIZE) -> np.ndarray:
    """One (S, S, 3) float scene, noise included, not yet rounded: a fence and ``DOTS`` dots, ``inside`` of them
    inside the fence."""
    image = background(rng, size)
    add_clutter(image, rng)
    while True:  # the fence and the dot size may not depend on the class: every fence must fit every class
        fence = draw_fence(rng, size)
        dot_radius = rng.uniform(*DOT_RADIUS) * size / NATIVE_SIZE
        places = dot_places(rng, fence, dot_radius, size)
        if places is not None:
            break
    centres = places[0][:inside] + places[1][: DOTS - inside]
    box, dy, dx = window(fence.centre, fence.extent + 1.0, size)
    paint(image, box, np.abs(fence.signed_distance(dy, dx)) - fence.half_width, palette_colour(rng))
    for centre in rng.permutation(np.asarray(centres)).tolist():
        box, dy, dx = window(tuple(centre), dot_radius + 1.0, size)
        paint(image, box, np.hypot(dy, dx) - dot_radius, palette_colour(rng))
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return image


def make_scenes(seed: int = 0, images_per_class: dict[str, int] | None = None) -> SceneImages:
    """Draw every split's scenes, class by class, each split and class from its own seeded stream, and round
    them to uint8 (N, 3, S, S) at the native size."""
    counts = dict(IMAGES_PER_CLASS if images_per_class is None else images_per_class)
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        drawn = np.empty((len(SCENE_CLASSES) * n, NATIVE_SIZE, NATIVE_SIZE, 3), dtype=np.float32)
        for class_index in range(len(SCENE_CLASSES)):
            rng = np.random.default_rng([STREAM, seed, split_index, class_index])
            for i in range(n):
                drawn[class_index * n + i] = draw_scene(rng, inside=class_index)
        np.clip(np.rint(drawn, out=drawn), 0, 255, out=drawn)
        images[split] = np.ascontiguousarray(drawn.astype(np.uint8).transpose(0, 3, 1, 2))
        labels[split] = np.repeat(np.arange(len(SCENE_CLASSES), dtype=np.int64), n)
        sources[split] = [f"scenes:{name}:{split}:{i}" for name in SCENE_CLASSES for i in range(n)]
    return SceneImages(classes=list(SCENE_CLASSES), images=images, labels=labels, sources=sources)


def describe_scenes() -> str:
    """One line on what the classes mean and how the scenes are drawn, for the dataset's ``info``."""
    per_class = ", ".join(f"{split} {n}" for split, n in IMAGES_PER_CLASS.items())
    return (
        f"drawn by layercut (numpy, seeded): {NATIVE_SIZE}x{NATIVE_SIZE} RGB scenes of one closed fence "
        f"({', '.join(FENCES)}; equal-area radius {FENCE_RADIUS[0]:g}-{FENCE_RADIUS[1]:g} px, random position, "
        f"rotation, line width and colour) and {DOTS} dots (radius {DOT_RADIUS[0]:g}-{DOT_RADIUS[1]:g} px, at least "
        f"{DOT_CLEARANCE:g} px clear of the line) from a {len(PALETTE)}-colour palette, on a tinted, shaded "
        f"background with {CLUTTER_RANGE[0]}-{CLUTTER_RANGE[1]} grey strokes and pixel noise (sd {PIXEL_NOISE:g}); "
        f"class: how many dots lie inside the fence ({', '.join(SCENE_CLASSES)}); images per class: {per_class}; "
        "bilinear resize to the image size"
    )
