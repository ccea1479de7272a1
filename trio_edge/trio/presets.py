"""The authors' released schedules as named presets (`--preset NAME`), light: no torch import.

Each preset is the cut table its authors' scripts pass for LLaVA-1.5-7B (32 decoder layers, 576 image tokens).
On another model it is scaled and says so: cut layers as the table has them on decoders of 32 layers or more
(the authors' scripts pass the same layers to 13B's 40), by depth on shallower ones (round(layer * L / 32), at
least the method's lowest cut layer); KEEP by image tokens (round(keep * M / 576), or int() where the authors'
code takes int(M * ratio): PyramidDrop); 32 layers and 576 tokens give the table itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError
from .methods import method_info

REFERENCE_LAYERS, REFERENCE_TOKENS = 32, 576


@dataclass(frozen=True)
class Preset:
    name: str
    method: str
    layers: tuple[int, ...]  # cut layers on the 32-layer reference model (cut N: N layers already run)
    keeps: tuple[int, ...]  # image tokens kept at each cut, of 576
    source: str
    vision: tuple[int, int] | None = None  # VisionZip: (dominant, contextual) tokens kept per tile of 576 patches
    keep_floor: bool = False  # KEEP on M tokens = int(keep * M / 576) (the code's int(M * ratio)), else round()
    # a schedule another family's port of the method defines (None: LLaVA's, the reference above): TRIO's Qwen
    # port gives ratios (the vision stage's of M, then each cut's of the current count) on `reference_layers`
    family: str | None = None
    ratios: tuple[float, ...] = ()
    reference_layers: int = REFERENCE_LAYERS

    def vision_for(self, patches: int) -> tuple[int, int]:
        """(dominant, contextual) per tile of `patches` patches: the table's, scaled by patches / 576 (dominant at
        least 1, its [CLS]); 576 patches give the table itself."""
        dominant, contextual = self.vision
        return max(1, round(dominant * patches / REFERENCE_TOKENS)), round(contextual * patches / REFERENCE_TOKENS)

    def cuts_for(self, num_layers: int, num_image_tokens: int) -> tuple[str, bool]:
        """('LAYER:KEEP,...' on this model, whether it had to be scaled)."""
        info = method_info(self.method)
        cuts, previous_layer, previous_keep = [], -1, num_image_tokens
        for layer, keep in zip(self.layers, self.keeps):
            scaled_layer = scaled_cut_layer(layer, num_layers, self.method)
            share = keep * num_image_tokens / REFERENCE_TOKENS
            scaled_keep = max(info.min_keep, min(previous_keep, int(share) if self.keep_floor else round(share)))
            if scaled_layer <= previous_layer:  # two cuts on one layer of a shallow model: keep the later budget
                cuts.pop()
            cuts.append(f"{scaled_layer}:{scaled_keep}")
            previous_layer, previous_keep = scaled_layer, scaled_keep
        scaled = (num_layers, num_image_tokens) != (REFERENCE_LAYERS, REFERENCE_TOKENS)
        return ",".join(cuts), scaled


def scaled_cut_layer(layer: int, num_layers: int, method: str, reference: int = REFERENCE_LAYERS,
                     lowest: int | None = None) -> int:
    """A cut layer of the `reference`-layer model (32: LLaVA-7B) on a decoder of `num_layers`: the layer itself on
    that depth or more (the authors' scripts pass the same layers to LLaVA-13B's 40), else round(layer * L /
    reference), at least `lowest` (default 1 for rules that own layer N-1, else 0), at most L - 1."""
    if num_layers >= reference:
        return layer
    if lowest is None:
        lowest = 1 if method_info(method).owns_layer else 0
    return max(lowest, min(num_layers - 1, round(layer * num_layers / reference)))


def eval_placement(method: str, ratio: float) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    """Where a method cuts when compared at a layer-averaged budget `ratio` (trio-eval): the reference cut layers
    and relative keep weights of its authors' table, and which table. TRIO (and the model-free baselines, at
    TRIO's cuts) take the 64-token table up to 1/9 and the 128-token one above (no 192 table is released)."""
    if method in ("fastv", "dart"):
        return (2,), (1.0,), f"{method} K=2 (its authors' layer), KEEP for the budget"
    if method == "pdrop":
        preset = PRESETS["pdrop"]
        return preset.layers, tuple(k / REFERENCE_TOKENS for k in preset.keeps), "pdrop layers 8/16/24, ratio 0.5 shape"
    table = PRESETS["trio-64" if ratio <= 64 / 576 + 1e-9 else "trio-128"]
    return table.layers, tuple(k / REFERENCE_TOKENS for k in table.keeps), f"{table.name} table shape"


OWN_PLACEMENT = ("fastv", "dart", "pdrop")  # decoder rules whose authors fix where they cut


def placed_cut_layers(method: str, ratio: float, num_layers: int) -> tuple[tuple[int, ...], tuple[float, ...], str]:
    """eval_placement's reference cut layers scaled to a `num_layers`-deep decoder (scaled_cut_layer; cuts a shallow
    model merges keep the later weight), their keep weights, and which table."""
    layers_ref, weights, shape = eval_placement(method, ratio)
    placed: dict[int, float] = {}
    for layer, weight in zip(layers_ref, weights):
        placed[scaled_cut_layer(layer, num_layers, method)] = weight
    return tuple(placed), tuple(placed.values()), shape


def vision_preset(method: str, ratio: float) -> str | None:
    """The authors' preset of a vision-tower method at exactly 64, 128 or 192 of 576 (1/9, 2/9, 1/3), else None."""
    for preset in PRESETS.values():
        if preset.method == method and preset.vision and abs(sum(preset.vision) / REFERENCE_TOKENS - ratio) < 1e-9:
            return preset.name
    return None


PRESETS = {p.name: p for p in (
    # ocy1/TRIO scripts (llava/model/scripts/v1_5/eval/*.sh): --layer_list [1,10,15] with these --image_token_list;
    # layer-averaged 64 and 128 of 576. No 192 table is released (trio-eval scales the 128 one, and says so).
    Preset("trio-64", "trio", (1, 10, 15), (92, 54, 22), "ocy1/TRIO scripts, 64-token table"),
    Preset("trio-128", "trio", (1, 10, 15), (218, 128, 54), "ocy1/TRIO scripts, 128-token table"),
    # pkunlp-icler/FastV: K=2, R=50% (the configuration its README and code use).
    Preset("fastv", "fastv", (2,), (288,), "pkunlp-icler/FastV: K=2, R=50%"),
    # ZichenWen1/DART scripts: K=2, max_num_trunction B keeps 4 pivots + 8 * (B // 8).
    Preset("dart-64", "dart", (2,), (68,), "ZichenWen1/DART: K=2, max_num_trunction 64"),
    Preset("dart-128", "dart", (2,), (132,), "ZichenWen1/DART: K=2, max_num_trunction 128"),
    Preset("dart-192", "dart", (2,), (196,), "ZichenWen1/DART: K=2, max_num_trunction 192"),
    # Cooperx521/PyramidDrop scripts: --layer_list [8,16,24] --image_token_ratio_list [0.5,0.25,0.125].
    Preset("pdrop", "pdrop", (8, 16, 24), (288, 144, 72), "Cooperx521/PyramidDrop: layers 8/16/24, ratio 0.5",
           keep_floor=True),
    # dvlab-research/VisionZip README: visionzip(model, dominant=54, contextual=10) for 64 tokens; 108+20 and
    # 162+30 for 128 and 192; per tile (sub-image) on LLaVA-NeXT. [CLS] is one of the dominant tokens.
    # ocy1/TRIO README (TRIO-VE, its default): --visual_token_num 96 --layer_list [16] --image_token_list [32], 64
    # layer-averaged of 576; no 128 / 192 settings are released: the same shape (1.5x after the tower, a third of
    # that from layer 16). Per tile on LLaVA-NeXT. vision = (T per tile of 576 patches, 0).
    Preset("trio-ve-64", "trio-ve", (16,), (32,), "ocy1/TRIO README: visual_token_num 96, layer 16 keeps 32", (96, 0)),
    Preset("trio-ve-128", "trio-ve", (16,), (64,), "ocy1/TRIO README shape, scaled to 128: 192, layer 16 keeps 64",
           (192, 0)),
    Preset("trio-ve-192", "trio-ve", (16,), (96,), "ocy1/TRIO README shape, scaled to 192: 288, layer 16 keeps 96",
           (288, 0)),
    # ocy1/TRIO README, Qwen2.5-VL-7B (28 layers): --image-token-ratio 0.167 (vision stage, int(0.167 M)) --layer-list
    # [14] --image-token-ratio-list [0.333] (int(0.333 x the current count) after layer 14): 11.1% layer-averaged.
    Preset("trio-qwen", "trio-ve", (14,), (), "ocy1/TRIO README (Qwen2.5-VL): image-token-ratio 0.167, layer 14 "
           "keeps 0.333 of the rest", family="qwen2.5-vl", ratios=(0.167, 0.333), reference_layers=28),
    Preset("visionzip-64", "visionzip", (), (), "dvlab-research/VisionZip: dominant 54 + contextual 10", (54, 10)),
    Preset("visionzip-128", "visionzip", (), (), "dvlab-research/VisionZip: dominant 108 + contextual 20", (108, 20)),
    Preset("visionzip-192", "visionzip", (), (), "dvlab-research/VisionZip: dominant 162 + contextual 30", (162, 30)),
)}


def preset_info(name: str) -> Preset:
    if name not in PRESETS:
        raise ScheduleError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def method_for(method: str | None, preset: str | None, default: str) -> str:
    """The method a command runs: --method, else the preset's, else `default`; a preset of another method fails."""
    if preset is None:
        return method or default
    owner = preset_info(preset).method
    if method is not None and method != owner:
        raise ScheduleError(f"--preset {preset} is a {owner} schedule; drop --method {method} or pick a {method} preset")
    return owner
