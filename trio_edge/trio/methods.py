"""The selection rules a cut can apply, and where each acts (light: no torch import, so command-line parsers
can list them and plans can be built from a name).

Where a rule acts decides the graphs a cut becomes:
- PROXY (TRIO): a cut N:K scores the tokens entering layer N with a proxy pass of layer N itself; the preceding
  segment ends at N and the select graph holds a copy of layer N (+ lm_head) for the proxy.
- OWNED_LAYER (FastV, DART, ...): the authors score with the attention / keys / states of the layer *before*
  the cut, computed on all tokens. A cut N:K owns decoder layer N-1 in prefill: the select graph runs layer
  N-1 on every token (writing its KV buffer), reads what the rule needs from it and keeps K image tokens of its
  output. The preceding segment ends at N-1; layer N-1 is also a one-layer segment, which runs it in decode.
- ANY_CUT (random, uniform): needs nothing from the model; acts like PROXY without the proxy pass.
- VISION_TOWER (VisionZip, TRIO-VE): prunes the image features inside the vision graph, before the decoder.
- EMBEDDING (DART as NVIDIA TensorRT Edge-LLM runs it): one cut at layer 0 that scores the input embeddings
  themselves (no layer runs first), per visual span.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ScheduleError

PROXY, OWNED_LAYER, ANY_CUT, VISION_TOWER, EMBEDDING = "proxy", "owned-layer", "any-cut", "vision-tower", "embedding"


@dataclass(frozen=True)
class Method:
    name: str
    acts: str  # PROXY / OWNED_LAYER / ANY_CUT / VISION_TOWER
    positions: str  # default positions after a cut: "renumber" or "original" (as the authors' code does)
    exportable: bool  # has an in-graph (ONNX) form
    default_cut_layers: tuple[int, ...] | None  # the authors' cut layers (32-layer LLaMA); None: TRIO's, scaled
    source: str  # where the rule comes from
    min_keep: int = 1  # fewest kept image tokens the rule can produce (DART always keeps its 4 image pivots)
    # a vision-tower rule whose authors also cut in the decoder: the rule of those cuts (TRIO-VE: TRIO's)
    decoder_cuts: str | None = None

    @property
    def cut_rule(self) -> str:
        """The rule the decoder cuts apply: the method's own, or a vision-tower method's `decoder_cuts`."""
        return self.decoder_cuts or self.name

    @property
    def owns_layer(self) -> bool:
        return self.acts == OWNED_LAYER


REGISTRY = {m.name: m for m in (
    Method("trio", PROXY, "renumber", True, None, "ocy1/TRIO (LLaVA code renumbers positions)"),
    Method("fastv", OWNED_LAYER, "original", True, (2,), "pkunlp-icler/FastV: layer K-1's last-token attention"),
    Method("sparsevlm", OWNED_LAYER, "renumber", True, (3, 7, 16),
           "Gumpest/SparseVLMs USE_VERSION=1_0 (the v1.5 tables): text raters' attention in layers 2/6/15, "
           "recycling by density-peak merge"),
    Method("dart", OWNED_LAYER, "original", True, (2,), "ZichenWen1/DART: key-norm pivots, least-similar picks",
           min_keep=4),
    Method("dart-embed", EMBEDDING, "original", True, (0,),
           "NVIDIA/TensorRT-Edge-LLM DartPruner (0.11): DART on the input embeddings before layer 0, a quota per "
           "visual span, DeepStack planes and M-RoPE rows compacted with the tokens"),
    Method("pdrop", PROXY, "renumber", True, (8, 16, 24), "Cooperx521/PyramidDrop: layer N's last-token attention"),
    Method("visionzip", VISION_TOWER, "renumber", True, None,
           "dvlab-research/VisionZip: [CLS]-attention dominant tokens + key-similarity contextual merges, per tile"),
    Method("trio-ve", VISION_TOWER, "renumber", True, None,
           "ocy1/TRIO encode_images: windowed shallow + deep [CLS] attention, merged after the projector; then TRIO "
           "cuts", decoder_cuts="trio"),
    Method("random", ANY_CUT, "renumber", False, None, "uniformly random subset (seeded)"),
    Method("uniform", ANY_CUT, "renumber", False, None, "evenly strided subset"),
)}

METHODS = tuple(REGISTRY)
RATERS_GRAPH = "raters"  # SparseVLM's stage choosing the text raters on the language model's input
EXPORTABLE_METHODS = tuple(name for name, m in REGISTRY.items() if m.exportable)


def method_info(name: str) -> Method:
    if name not in REGISTRY:
        raise ScheduleError(f"unknown selection method {name!r}; choose one of {', '.join(METHODS)}")
    return REGISTRY[name]


def check_cuts(method: str, cuts) -> None:
    """Cuts (LAYER, KEEP pairs) a rule can take: one that owns layer N-1 cannot cut at N = 0 (there is no layer
    before it), and no cut may keep fewer tokens than the rule always keeps."""
    info = method_info(method)
    layers = [layer for layer, _ in cuts]
    if info.acts == VISION_TOWER and cuts and info.decoder_cuts is None:
        raise ScheduleError(f"--method {method} prunes inside the vision tower and has no decoder cuts; got cut layers "
                            f"{layers}")
    if info.decoder_cuts is not None:
        return check_cuts(info.decoder_cuts, cuts)
    if info.acts == EMBEDDING and layers and layers != [0]:
        raise ScheduleError(f"--method {method} prunes the input embeddings once, before any decoder layer: give one "
                            f"cut 0:KEEP (or --keep-ratio R), not cut layers {layers}")
    if info.owns_layer and any(layer < 1 for layer in layers):
        raise ScheduleError(f"--method {method} scores a cut N:K with decoder layer N-1, so N must be at least 1; "
                            f"got cut layers {layers} (e.g. use --cuts 2:KEEP)")
    small = [keep for _, keep in cuts if keep < info.min_keep]
    if small:
        raise ScheduleError(f"--method {method} keeps at least {info.min_keep} image tokens per cut; got KEEP {small}")
