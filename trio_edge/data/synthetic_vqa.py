"""A seeded, procedurally generated visual QA task whose answers live in small image regions.

Each image shows a few small coloured shapes on a plain or noisy background. Each question is about
one object, or all objects of one shape (the others are distractors), so a model must look at the right
few image tokens:

  color     "what color is the circle?"       -> "red"     (the shape is unique in the image)
  shape     "what shape is the blue object?"  -> "square"  (the colour is unique in the image)
  count     "how many triangles are there?"   -> "two"     (1-3 of them, among other shapes)

A fourth kind, position ("is the red object left or right of the green object?" -> "left"), can be
asked for explicitly (`kind="position"`) but is not in the default mix (`KINDS`): trio-tiny did not
learn it within its CPU training budget (it needs absolute x positions of two looked-up objects).

Every answer is one word of the tiny tokenizer's vocabulary (`trio_edge.models.tiny`).

Records format (shared by evaluation and calibration): a folder holding image files and a
`records.jsonl`, one JSON object per line with `image` (a path relative to the folder), `question` and
`answer`; other fields (e.g. `kind`) are kept as they are. `read_records` validates it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

SIZE = 112  # images are drawn square at this size (trio-tiny's grid), other sizes are letterboxed

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 75, 225),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 195),
    "orange": (250, 140, 25),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses",
           "ring": "rings"}
NUMBERS = ("zero", "one", "two", "three")
KINDS = ("color", "shape", "count")  # the default mix (make_split cycles through these)
ALL_KINDS = KINDS + ("position",)
MAX_OBJECTS = 5
RADIUS = (0.09, 0.125)  # object radius range as a fraction of the image side
RECORDS_FILE = "records.jsonl"
REQUIRED_FIELDS = ("image", "question", "answer")


def answer_vocabulary() -> list[str]:
    """Every answer the generator can produce."""
    return [*COLORS, *SHAPES, *NUMBERS[1:], "left", "right"]


def question_words() -> list[str]:
    """Every word the generator's questions can contain (for vocabulary checks)."""
    words = set("what color is the shape object how many are there left or right of".split())
    words |= set(COLORS) | set(SHAPES) | set(PLURALS.values())
    return sorted(words)


# ---- drawing ---------------------------------------------------------------------------------------
def _draw(draw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = 0.82 * r
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - 0.97 * r, cy + 0.8 * r), (cx + 0.97 * r, cy + 0.8 * r)], fill=fill)
    elif shape == "cross":
        t = 0.36 * r
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(0.38 * r)))
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _place(rng, radii: list[float], size: int, min_dx: float = 0.0, tries: int = 2000):
    """Non-overlapping centres for objects of the given radii (rejection sampling).

    With `min_dx`, the first two objects' centres are at least that far apart horizontally."""
    for _ in range(tries):
        centres: list[tuple[float, float]] = []
        for r in radii:
            for _ in range(200):
                x, y = rng.uniform(r + 2, size - r - 2, size=2)
                if len(centres) == 1 and min_dx and abs(x - centres[0][0]) < min_dx:
                    continue
                if all((x - px) ** 2 + (y - py) ** 2 >= (r + pr + 3) ** 2
                       for (px, py), pr in zip(centres, radii)):
                    centres.append((float(x), float(y)))
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError("could not place objects")  # not reached for the sizes used here


def render(objects: list[dict], size: int, background: dict):
    """Objects + background description -> (PIL RGB image, uint8 mask of object index + 1, 0 = none)."""
    from PIL import Image, ImageDraw

    noise_rng = np.random.default_rng(background["noise_seed"])
    base = np.empty((size, size, 3), dtype=np.float64)
    base[:] = background["rgb"]
    if background["noise"] > 0:
        base += noise_rng.normal(0.0, background["noise"], size=base.shape)
    image = Image.fromarray(base.round().clip(0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for index, obj in enumerate(objects):
        _draw(draw, obj["shape"], obj["x"], obj["y"], obj["r"], tuple(obj["rgb"]))
        _draw(mask_draw, obj["shape"], obj["x"], obj["y"], obj["r"], index + 1)
    return image, np.asarray(mask, dtype=np.uint8)


def _colour(rng, name: str) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLORS[name])


# ---- samples ---------------------------------------------------------------------------------------
def make_sample(rng: np.random.Generator, kind: str | None = None, size: int = SIZE,
                objects: tuple[int, int] = (3, MAX_OBJECTS)) -> dict:
    """One sample: dict(image=PIL.Image, question, answer, kind, objects, mask).

    `objects` lists what was drawn (shape, color, x, y, r); `mask` (H, W uint8) holds, per pixel, the
    index + 1 of the object drawn there (0: background). Deterministic given the rng state.
    The `objects` argument bounds how many objects are drawn (fewer: an easier scene, e.g. for a
    training curriculum; count questions always have a distractor, position ones two targets)."""
    lo, hi = objects
    if not 1 <= lo <= hi <= MAX_OBJECTS or (kind in ("count", "position") and hi < 2):
        raise ValueError(f"objects={objects} must satisfy 1 <= lo <= hi <= {MAX_OBJECTS} (hi >= 2 for {kind})")
    if kind is None:
        kind = KINDS[int(rng.integers(len(KINDS)))]
    elif kind not in ALL_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(ALL_KINDS)}")
    colours, shapes = list(COLORS), list(SHAPES)

    def pick(options, exclude=()):
        pool = [o for o in options if o not in exclude]
        return pool[int(rng.integers(len(pool)))]

    min_dx = 0.0
    if kind == "color":
        shape, colour = pick(shapes), pick(colours)
        others = [(pick(shapes, {shape}), pick(colours)) for _ in range(int(rng.integers(lo - 1, hi)))]
        specs = [(shape, colour)] + others
        question, answer = f"what color is the {shape}?", colour
    elif kind == "shape":
        shape, colour = pick(shapes), pick(colours)
        others = [(pick(shapes), pick(colours, {colour})) for _ in range(int(rng.integers(lo - 1, hi)))]
        specs = [(shape, colour)] + others
        question, answer = f"what shape is the {colour} object?", shape
    elif kind == "count":
        shape, count = pick(shapes), int(rng.integers(1, min(3, hi - 1) + 1))
        extra = int(rng.integers(max(1, lo - count), hi - count + 1))
        specs = [(shape, pick(colours)) for _ in range(count)]
        specs += [(pick(shapes, {shape}), pick(colours)) for _ in range(extra)]
        question, answer = f"how many {PLURALS[shape]} are there?", NUMBERS[count]
    else:  # position
        first = pick(colours)
        second = pick(colours, {first})
        specs = [(pick(shapes), first), (pick(shapes), second)]
        specs += [(pick(shapes), pick(colours, {first, second})) for _ in range(int(rng.integers(max(0, lo - 2), hi - 1)))]
        question = f"is the {first} object left or right of the {second} object?"
        answer = None  # from the placement
        min_dx = 0.15 * size

    radii = [float(rng.uniform(*RADIUS) * size) for _ in specs]
    centres = _place(rng, radii, size, min_dx=min_dx)
    order = rng.permutation(len(specs))  # drawing order carries no information
    objects = [{"shape": specs[i][0], "color": specs[i][1], "x": centres[i][0], "y": centres[i][1],
                "r": radii[i], "rgb": _colour(rng, specs[i][1])} for i in order]
    if kind == "position":
        answer = "left" if centres[0][0] < centres[1][0] else "right"
    grey = float(rng.uniform(70, 185))
    background = {"rgb": [grey + float(rng.uniform(-12, 12)) for _ in range(3)],
                  "noise": float(rng.choice([0.0, rng.uniform(2, 12)])), "noise_seed": int(rng.integers(2**31))}
    image, mask = render(objects, size, background)
    return {"image": image, "question": question, "answer": answer, "kind": kind, "objects": objects,
            "mask": mask}


def scene_questions(sample: dict, size: int | None = None, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Every question (dict of question, answer, kind) of the given kinds that is well-posed for a
    sample's scene.

    Training uses it to ask several questions about one image; the rules are the generator's own:
    a colour question needs a unique shape, a shape question a unique colour, counts are 1-3, and a
    position question needs two unique colours at least 15% of the image width apart."""
    size = size or sample["image"].width
    objects = sample["objects"]
    shapes = [o["shape"] for o in objects]
    colours = [o["color"] for o in objects]
    out = []
    for o in objects:
        if shapes.count(o["shape"]) == 1:
            out.append({"question": f"what color is the {o['shape']}?", "answer": o["color"], "kind": "color"})
        if colours.count(o["color"]) == 1:
            out.append({"question": f"what shape is the {o['color']} object?", "answer": o["shape"], "kind": "shape"})
    for shape in sorted(set(shapes), key=SHAPES.index):
        if shapes.count(shape) <= 3:
            out.append({"question": f"how many {PLURALS[shape]} are there?", "answer": NUMBERS[shapes.count(shape)],
                        "kind": "count"})
    for a in objects:
        for b in objects:
            if a is not b and colours.count(a["color"]) == 1 and colours.count(b["color"]) == 1 \
                    and abs(a["x"] - b["x"]) >= 0.15 * size:
                out.append({"question": f"is the {a['color']} object left or right of the {b['color']} object?",
                            "answer": "left" if a["x"] < b["x"] else "right", "kind": "position"})
    return [q for q in out if q["kind"] in kinds]


def make_split(n: int, seed: int, size: int = SIZE, objects: tuple[int, int] = (3, MAX_OBJECTS)) -> list[dict]:
    """`n` samples, kinds balanced (cycled in order), deterministic per seed."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, kind=KINDS[i % len(KINDS)], size=size, objects=objects) for i in range(n)]


# ---- several images per question ---------------------------------------------------------------------------
def make_multi_sample(rng: np.random.Generator, images: int, kind: str | None = None, size: int = SIZE) -> dict:
    """A question about `images` images whose answer lives in one of them: a colour question names a shape that
    only the target image shows, a shape question a colour only it shows, a count question a shape no other image
    shows (so the count is the target's). The target sits at a random place among distractor scenes.
    dict(image=[PIL images], question, answer, kind, target=index of the target image, objects=[each image's])."""
    target = make_sample(rng, kind=kind, size=size)
    words = target["question"].rstrip("?").split()
    kind = target["kind"]
    if kind == "color":  # "what color is the circle?": no other image shows a circle
        avoided = ("shape", words[-1])
    elif kind == "shape":  # "what shape is the blue object?": no other image shows blue
        avoided = ("color", words[-2])
    else:  # "how many circles are there?": no other image shows a circle
        avoided = ("shape", next(shape for shape, plural in PLURALS.items() if plural == words[2]))
    others = []
    while len(others) < images - 1:
        distractor = make_sample(rng, size=size)
        if all(o[avoided[0]] != avoided[1] for o in distractor["objects"]):
            others.append(distractor)
    place = int(rng.integers(images))
    scenes = others[:place] + [target] + others[place:]
    return {"image": [scene["image"] for scene in scenes], "question": target["question"], "answer": target["answer"],
            "kind": kind, "target": place, "objects": [scene["objects"] for scene in scenes]}


def make_multi_split(n: int, seed: int, images: int, size: int = SIZE) -> list[dict]:
    """`n` several-image samples (make_multi_sample), kinds balanced, deterministic per seed."""
    rng = np.random.default_rng(seed)
    return [make_multi_sample(rng, images, kind=KINDS[i % len(KINDS)], size=size) for i in range(n)]


# ---- records (jsonl folder) ------------------------------------------------------------------------
def write_records(samples: list[dict], folder: str | Path, *, images_dir: str = "images",
                  records_file: str = RECORDS_FILE, names: list[str] | None = None) -> Path:
    """Write samples as PNGs under `folder/images_dir` plus `folder/records_file`; returns the jsonl path.

    Images are named by index (00000.png, ...) unless `names` (file stems, one per sample) is given."""
    folder = Path(folder)
    (folder / images_dir).mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(samples) - 1)))
    lines = []
    for index, sample in enumerate(samples):
        stem = names[index] if names else f"{index:0{width}d}"
        relative = f"{images_dir}/{stem}.png" if images_dir else f"{stem}.png"
        sample["image"].save(folder / relative, format="PNG", optimize=False)
        record = {"image": relative, "question": sample["question"], "answer": sample["answer"]}
        if "kind" in sample:
            record["kind"] = sample["kind"]
        lines.append(json.dumps(record))
    path = folder / records_file
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_records(folder: str | Path) -> list[dict]:
    """Read and validate a records folder (its `records.jsonl`) or a `.jsonl` file.

    Returns one dict per record: `image` as an absolute path inside the folder, `question`, `answer`
    and any other fields as written. Raises InputError naming the file and line of the first problem."""
    folder = Path(folder)
    if folder.is_file():
        path, root = folder, folder.parent
    elif folder.is_dir():
        path, root = folder / RECORDS_FILE, folder
        if not path.is_file():
            raise InputError(f"records folder {folder} has no {RECORDS_FILE}; expected one JSON object per "
                             "line with fields image (path relative to the folder), question, answer")
    else:
        raise InputError(f"records folder not found: {folder}")
    root_resolved = root.resolve()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read records file {path}: {error}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object with fields {', '.join(REQUIRED_FIELDS)}")
        for name in REQUIRED_FIELDS:
            value = record.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: field {name!r} must be a non-empty string, got {value!r:.80}")
        relative = Path(record["image"])
        if relative.is_absolute() or relative.drive:
            raise InputError(f"{where}: image path {record['image']!r} must be relative to {root}")
        image_path = (root / relative).resolve()
        if not image_path.is_relative_to(root_resolved):
            raise InputError(f"{where}: image path {record['image']!r} escapes the records folder {root}")
        if not image_path.is_file():
            raise InputError(f"{where}: image file not found: {root / relative}")
        records.append({**record, "image": str(image_path)})
    if not records:
        raise InputError(f"records file {path} holds no records")
    return records
