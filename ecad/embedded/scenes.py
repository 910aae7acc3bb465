"""The procedural world the embedded model is trained on: simple scenes and the captions that describe them.

A caption comes from a small grammar — one to three objects of one shape and colour, an optional
position (single objects), an optional background — and a scene is drawn from it deterministically
given a seed. Objects sit in the cells of a 3 × 3 grid, so counts and positions are unambiguous for the
judge. Objects whose position the caption leaves open go to random cells of a pool — any of the nine
(`EVERY_CELL`, the judge's scenes, so it can read any picture) or the five named positions
(`NAMED_CELLS`) — or to one fixed layout per count (`DIAGONAL`, the embedded model's training scenes).
About a tenth of the captions are held out: training never sees them, evaluation uses only them.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
GRID = 3

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
COUNTS = {1: "a", 2: "two", 3: "three"}
# Named positions of a single object, as (row, column) cells of the grid.
POSITIONS = {
    "top left": (0, 0),
    "top right": (0, 2),
    "center": (1, 1),
    "bottom left": (2, 0),
    "bottom right": (2, 2),
}
Cells = tuple[tuple[int, int], ...]
EVERY_CELL: Cells = tuple((row, column) for row in range(GRID) for column in range(GRID))
NAMED_CELLS: Cells = tuple(POSITIONS.values())
# One layout per count on the main diagonal: no layout left to choose, and no two objects side by side.
DIAGONAL: Mapping[int, Cells] = {1: ((1, 1),), 2: ((0, 0), (2, 2)), 3: ((0, 0), (1, 1), (2, 2))}
# Where unplaced objects go: distinct random cells of a pool, or the fixed layout for their count.
OpenCells = Cells | Mapping[int, Cells]
OPEN_CELLS: dict[str, OpenCells] = {"diagonal": DIAGONAL, "named": NAMED_CELLS, "every": EVERY_CELL}
HELD_OUT_SHARE = 10  # one caption in ten, chosen by a hash of its text


@dataclass(frozen=True, order=True)
class Caption:
    """What a caption asks for; None means the caption leaves it open (the scene picks at random)."""

    shape: str
    colour: str
    count: int
    position: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.count not in COUNTS:
            raise ValueError(f"count must be one of {sorted(COUNTS)}, got {self.count}")
        if self.position is not None and (self.position not in POSITIONS or self.count != 1):
            raise ValueError(f"position {self.position!r} needs a single object and one of {list(POSITIONS)}")
        if self.background is not None and self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")

    @property
    def text(self) -> str:
        noun = self.shape if self.count == 1 else f"{self.shape}s"
        words = [COUNTS[self.count], self.colour, noun]
        if self.position == "center":
            words.append("in the center")
        elif self.position is not None:
            words.append(f"at the {self.position}")
        if self.background is not None:
            words.append(f"on a {self.background} background")
        return " ".join(words)

    @property
    def layout(self) -> str:
        """How the objects are placed: at a named position, or this many of them in random cells."""
        return "placed" if self.position is not None else f"{self.count} anywhere"

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.text.encode()).digest()
        return int.from_bytes(digest[:4], "big") % HELD_OUT_SHARE == 0


def all_captions() -> list[Caption]:
    """Every caption the grammar can say, in a fixed order."""
    captions = []
    for shape, colour, background in itertools.product(SHAPES, COLOURS, (None, *BACKGROUNDS)):
        for position in (None, *POSITIONS):
            captions.append(Caption(shape, colour, 1, position, background))
        for count in (2, 3):
            captions.append(Caption(shape, colour, count, None, background))
    return captions


def training_captions() -> list[Caption]:
    return [caption for caption in all_captions() if not caption.held_out]


def held_out_captions() -> list[Caption]:
    return [caption for caption in all_captions() if caption.held_out]


@dataclass(frozen=True)
class Scene:
    """A caption made concrete: background, and the grid cell and size of each object."""

    caption: Caption
    background: str
    cells: tuple[tuple[int, int], ...]
    sizes: tuple[float, ...]  # object side as a share of a grid cell
    offsets: tuple[tuple[float, float], ...]  # centre offset from the cell's centre, share of a cell


def describe_open_cells(open_cells: OpenCells) -> str:
    """Where `open_cells` puts unplaced objects, as a phrase for model cards."""
    if isinstance(open_cells, Mapping):
        names = {cell: name for name, cell in POSITIONS.items()}
        layouts = "; ".join(
            f"{count}: {' + '.join(names[cell] for cell in cells)}" for count, cells in open_cells.items()
        )
        return f"in one fixed layout per count ({layouts})"
    return f"in random cells, {len(open_cells)} of the {GRID} × {GRID} grid's {GRID * GRID}"


def sample_scene(caption: Caption, rng: random.Random, open_cells: OpenCells = EVERY_CELL) -> Scene:
    """A random scene that the caption truthfully describes; unplaced objects go where `open_cells` says."""
    background = caption.background or rng.choice(list(BACKGROUNDS))
    if caption.position is not None:
        cells = [POSITIONS[caption.position]]
    elif isinstance(open_cells, Mapping):
        cells = list(open_cells[caption.count])
    else:
        cells = rng.sample(open_cells, caption.count)
    sizes = tuple(rng.uniform(0.6, 0.8) for _ in cells)
    offsets = tuple((rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)) for _ in cells)
    return Scene(caption, background, tuple(sorted(cells)), sizes, offsets)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene at `size` × `size` (drawn at 4× and downsampled, for smooth edges)."""
    scale = 4
    canvas = size * scale
    image = Image.new("RGB", (canvas, canvas), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = canvas / GRID
    colour = COLOURS[scene.caption.colour]
    for (row, column), side, (dx, dy) in zip(scene.cells, scene.sizes, scene.offsets, strict=True):
        cx = (column + 0.5 + dx) * cell
        cy = (row + 0.5 + dy) * cell
        half = side * cell / 2
        box = (cx - half, cy - half, cx + half, cy + half)
        if scene.caption.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif scene.caption.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def scenes(
    captions: list[Caption], seed: int, open_cells: OpenCells = EVERY_CELL
) -> Iterator[tuple[Caption, Scene]]:
    """An endless, reproducible stream of (caption, scene) pairs, captions drawn uniformly."""
    rng = random.Random(seed)
    while True:
        caption = rng.choice(captions)
        yield caption, sample_scene(caption, rng, open_cells)


def _sample_in_order(pool: list[Caption], count: int, seed: int) -> list[Caption]:
    chosen = set(random.Random(seed).sample(pool, count))
    return [caption for caption in pool if caption in chosen]


def calibration_captions(count: int = 96, seed: int = 0) -> list[Caption]:
    """The search's calibration set: a fixed sample of training captions, in grammar order."""
    return _sample_in_order(training_captions(), count, seed)


def validation_captions(count: int = 64, seed: int = 1) -> list[Caption]:
    """The search's validation set, on which tiers are chosen: a fixed sample of the training captions
    outside the (default) calibration set, in grammar order."""
    calibration = set(calibration_captions())
    return _sample_in_order([c for c in training_captions() if c not in calibration], count, seed)
