#!/usr/bin/env python
"""Train `trio-tiny`: a small LlavaNextForConditionalGeneration on the synthetic visual QA task.

Reproducible (seeded), CPU-friendly (one thread), and the inputs match the runtime exactly:
  - prompts are the runtime's default template "USER: <image>\\n{question} ASSISTANT:" tokenised by the
    adapter (`adapter.prompt_ids`), followed by the answer word and the eos token `</s>`;
  - pixels come from `adapter.pixel_values(image, grid)` (letterbox + the checkpoint's processor), cached
    as uint8 and restored bit-exactly (checked);
  - the training forward calls the model's own vision tower / projector / decoder modules but packs the
    anyres tiles with tensor ops instead of HF's per-image loop; the script checks once that its image
    features and answer logits equal the model's own `get_image_features` / `forward`.
Recipe (each part was needed on the CPU budget; see trio_edge/assets/trio-tiny/README.md):
  - loss: cross-entropy on the answer and eos tokens only;
  - auxiliary per-patch heads on the projected vision features predicting the colour and shape of the
    object covering each patch (DESIGN.md section 3; background patches weighted 0.2);
  - stage 1: those heads + vision tower + projector alone for 1000 cheap steps (no decoder), since
    recognising shapes from 8-pixel patches is the slowest part;
  - stage 2: everything; 4 questions per image share one forward under a tree attention mask (each
    question attends to the prefix, the image and itself, with positions continuing from the image:
    identical to asking it alone, checked); a question probe (linear head on the last prompt position
    after 2 decoder layers, predicting the shape/colour the question names); a curriculum of 1-2
    object scenes for the first 150 steps, fading out by step 300;
  - unit-scale embeddings and 1/sqrt(fan_in) projections instead of HF's 0.02 init.
The aux heads and the probe are training-only: the saved checkpoint is a plain LLaVA-NeXT.

Usage (the shipped model, ~25 min on one CPU thread; dataset tensors are cached in --cache-dir):
    python scripts/train_trio_tiny.py --out trio_edge/assets/trio-tiny --samples-out trio_edge/assets/samples
Measure speed only:
    python scripts/train_trio_tiny.py --bench 20
Held-out accuracy of the shipped model (greedy generate, full image tokens):
    python scripts/train_trio_tiny.py --eval-only trio-tiny --heldout 400
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trio_edge.data.synthetic_vqa import COLORS, KINDS, PLURALS, RADIUS, SHAPES, make_split, scene_questions
from trio_edge.models.llava import LlavaNextAdapter
from trio_edge.models.tiny import make_tiny_processor, make_tiny_tokenizer, tiny_llava_next_config

TRAIN_SEED_OFFSET = 1_000  # data seeds: train = seed + 1000, validation = seed + 2000
VAL_SEED_OFFSET = 2_000
EASY_SEED_OFFSET = 3_000  # curriculum: scenes with 1-2 objects
HELDOUT_SEED = 12345  # the held-out split reported in the model card (never used in training)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# ---- model construction ----------------------------------------------------------------------------
def build(args):
    from transformers import LlavaNextForConditionalGeneration

    tokenizer = make_tiny_tokenizer()
    config = tiny_llava_next_config(
        vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tile=args.tile,
        patch=args.patch, hidden=args.hidden, layers=args.layers, vision_layers=args.vision_layers,
        vision_hidden=args.vision_hidden, heads=args.heads, kv_heads=args.kv_heads,
    )
    processor = make_tiny_processor(tokenizer, tile=args.tile, patch=args.patch)
    torch.manual_seed(args.seed)
    model = LlavaNextForConditionalGeneration(config)
    if args.init == "scaled":
        scaled_init(model, config)
    adapter = LlavaNextAdapter(config, processor, model)
    return model, processor, adapter


def scaled_init(model, config, skip: tuple[str, ...] = ("vision_tower",)):
    """Unit-scale embeddings and 1/sqrt(fan_in) projections in the decoder and projector (and in any
    module whose name does not contain one of `skip`).

    HF's default (std 0.02 everywhere) leaves attention logits near zero and token embeddings tiny
    next to the residual updates; on this small model that stretches the initial plateau."""
    depth = config.text_config.num_hidden_layers
    with torch.no_grad():
        for name, module in model.named_modules():
            if any(part in name for part in skip):
                continue  # e.g. CLIP keeps its own (already fan-in scaled) init
            if isinstance(module, nn.Linear):
                std = module.in_features ** -0.5
                if name.endswith(("o_proj", "down_proj")):
                    std /= (2 * depth) ** 0.5
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)
        if getattr(model.model, "image_newline", None) is not None:
            model.model.image_newline.normal_(0.0, 1.0)


# ---- dataset tensors -------------------------------------------------------------------------------
def region_objects(region: np.ndarray, per_side: int, objects: int) -> np.ndarray:
    """Region (H, W) of object ids (0: background) split into per_side x per_side patches, row by row ->
    per patch the majority object if it covers at least 20% of the patch, else 0."""
    h = region.shape[0] // per_side
    blocks = region.reshape(per_side, h, per_side, h).transpose(0, 2, 1, 3).reshape(per_side * per_side, h * h)
    counts = np.stack([(blocks == k).sum(1) for k in range(objects + 1)], 1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    return np.where(counts.max(1) >= 0.2 * h * h, best, 0)


def object_labels(sample, ids: np.ndarray) -> np.ndarray:
    """Object ids (0: background) -> (2, len) colour / shape labels (0: background)."""
    objects = sample["objects"]
    colour_of = np.array([0] + [1 + list(COLORS).index(o["color"]) for o in objects])
    shape_of = np.array([0] + [1 + SHAPES.index(o["shape"]) for o in objects])
    return np.stack([colour_of[ids], shape_of[ids]]).astype(np.int64)


def patch_labels(sample, grid_size: int, tile: int, patch: int) -> np.ndarray:
    """(2, tiles * patches) colour / shape label of the object covering each patch (0: background),
    in the vision tower's token order: base tile (whole image), then the grid tiles row by row."""
    mask, n_obj, per_tile = sample["mask"], len(sample["objects"]), tile // patch
    tiles = [region_objects(mask, per_tile, n_obj)]  # base tile: the whole image
    rows = grid_size // tile
    for r in range(rows):
        for c in range(rows):
            tiles.append(region_objects(mask[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile], per_tile, n_obj))
    return object_labels(sample, np.concatenate(tiles))


def pick_questions(sample, k: int, rng) -> list[dict]:
    """The sample's own question first, then up to k-1 other well-posed questions about the same
    image, preferring kinds not yet chosen (several questions share one image in a training step)."""
    chosen = [{"question": sample["question"], "answer": sample["answer"], "kind": sample["kind"]}]
    pool = [q for q in scene_questions(sample) if q["question"] != sample["question"]]
    rng.shuffle(pool)
    while len(chosen) < k and pool:
        used = {q["kind"] for q in chosen}
        fresh = [q for q in pool if q["kind"] not in used]
        pick = (fresh or pool)[0]
        pool.remove(pick)
        chosen.append(pick)
    return chosen


def build_tensors(samples, adapter, grid, args, questions_per_image: int, seed: int, labels_of=None):
    """Samples -> dict of tensors: uint8 pixels, per-question text-after-image ids (N, K, L) with
    lengths (0: no question), answer ids, per-patch labels (`labels_of(sample)`, default LLaVA's tiles)."""
    tokenizer = adapter.processor.tokenizer
    image_id, eos_id, pad_id = adapter.image_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    m = adapter.image_token_count(grid)
    codec = PixelCodec(adapter)
    labels_of = labels_of or (lambda sample: patch_labels(sample, grid[0], args.tile, args.patch))
    rng = np.random.default_rng(seed)
    pixels, branches, labels, questions = None, [], [], []
    prefix = None
    for sample in samples:
        pv = adapter.pixel_values(sample["image"], grid)  # exactly the runtime's preprocessing
        u8 = codec.encode(pv)
        if len(branches) < 64:  # the uint8 cache must restore the processor's output exactly
            assert torch.equal(codec.decode(u8[None])[0], pv), "uint8 pixel cache is not exact"
        if pixels is None:  # filled in place: no list of tensors to stack (a copy of the whole set)
            pixels = torch.empty((len(samples), *u8.shape), dtype=torch.uint8)
        pixels[len(branches)] = u8
        rows = []
        chosen = pick_questions(sample, questions_per_image, rng)
        questions.append([q["question"] for q in chosen])
        for q in chosen:
            ids = adapter.prompt_ids(q["question"], m)[0].tolist()
            start = ids.index(image_id)
            assert ids[start:start + m] == [image_id] * m and image_id not in ids[start + m:]
            prefix = ids[:start] if prefix is None else prefix
            assert ids[:start] == prefix, "the text before the image must be the same for every prompt"
            answer = tokenizer(q["answer"], add_special_tokens=False)["input_ids"]
            assert len(answer) == 1 and answer[0] != tokenizer.unk_token_id, q["answer"]
            rows.append((ids[start + m:] + [answer[0], eos_id], answer[0], KINDS.index(q["kind"])))
        branches.append(rows)
        labels.append(labels_of(sample))
    n, width = len(samples), max(len(r[0]) for rows in branches for r in rows)
    suffix = torch.full((n, questions_per_image, width), pad_id, dtype=torch.long)
    lengths = torch.zeros((n, questions_per_image), dtype=torch.long)
    answers = torch.full((n, questions_per_image), -100, dtype=torch.long)
    kinds = torch.zeros((n, questions_per_image), dtype=torch.long)
    for i, rows in enumerate(branches):
        for j, (ids, answer, kind) in enumerate(rows):
            suffix[i, j, :len(ids)] = torch.tensor(ids)
            lengths[i, j], answers[i, j], kinds[i, j] = len(ids), answer, kind
    return {"pixels": pixels, "prefix": torch.tensor(prefix), "suffix": suffix, "lengths": lengths,
            "answer": answers, "labels": torch.from_numpy(np.stack(labels)), "kinds": kinds, "eos": eos_id,
            "questions": questions}


KEYWORDS = list(SHAPES) + list(COLORS)


def question_keys(questions, k: int) -> torch.Tensor:
    """Per question, the object it names first (a shape or colour, index into KEYWORDS); -100: none.

    Target of the training-only question probe (the decoder's last prompt position must know what
    it is looking for before it can look it up in the image)."""
    lookup = {w: i for i, w in enumerate(KEYWORDS)}
    lookup.update({PLURALS[shape]: i for i, shape in enumerate(SHAPES)})
    keys = torch.full((len(questions), k), -100, dtype=torch.long)
    for i, row in enumerate(questions):
        for j, question in enumerate(row[:k]):
            words = [w.strip("?") for w in question.split()]
            keys[i, j] = next(lookup[w] for w in words if w in lookup)
    return keys


class PixelCodec:
    """The processor's normalised pixels as uint8 (the dataset cache) and back, bit-exactly (build_tensors checks).

    LLaVA's pixels are (tiles, 3, h, w); Qwen's are flattened patches (patches, 3 * temporal * patch * patch)
    of a still image, whose temporal frames are copies: stored as (patches, 3, patch * patch), one frame, so the
    per-channel mean / std broadcast, and repeated and flattened again on decode."""

    def __init__(self, adapter):
        ip = adapter.processor.image_processor
        self.flat = adapter.tile_size == 0  # Qwen: no tiles, flattened patches
        self.frames = int(adapter.vision_config.temporal_patch_size) if self.flat else 1
        shape = (3, 1) if self.flat else (3, 1, 1)
        self.mean, self.std = torch.tensor(ip.image_mean).view(shape), torch.tensor(ip.image_std).view(shape)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.flat:
            frames = pixels.unflatten(-1, (3, self.frames, -1))
            assert all(torch.equal(frames[..., 0, :], frames[..., t, :]) for t in range(self.frames)), "not a still image"
            pixels = frames[..., 0, :]
        return ((pixels * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)

    def decode(self, u8: torch.Tensor) -> torch.Tensor:
        pixels = (u8.float() / 255.0 - self.mean) / self.std
        if self.flat:
            return pixels.unsqueeze(-2).expand(*pixels.shape[:-1], self.frames, pixels.shape[-1]).flatten(-3)
        return pixels


def dataset(n, seed, adapter, grid, args, name, questions_per_image=1, objects=(3, 5), labels_of=None):
    key = hashlib.sha256(json.dumps([n, seed, getattr(args, "tile", None), getattr(args, "patch", None), grid, name,
                                     questions_per_image, list(objects), list(RADIUS), list(KINDS), 4]).encode()).hexdigest()[:12]
    path = Path(args.cache_dir) / f"{name}-{n}-{seed}-{key}.pt"
    if path.is_file():
        log(f"{name}: cached {path}")
        out = torch.load(path, weights_only=True)
        out["keys"] = question_keys(out["questions"], out["suffix"].shape[1])
        return out
    t0 = time.time()
    out = build_tensors(make_split(n, seed, objects=tuple(objects)), adapter, grid, args, questions_per_image, seed,
                        labels_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    log(f"{name}: built {n} samples in {time.time() - t0:.0f}s -> {path}")
    out["keys"] = question_keys(out["questions"], out["suffix"].shape[1])
    return out


# ---- fast training forward -------------------------------------------------------------------------
class Trainer(nn.Module):
    def __init__(self, model, adapter, grid, probe_layer: int = 2):
        super().__init__()
        self.model = model
        inner = model.model
        tower = inner.vision_tower
        self.vision = getattr(tower, "vision_model", tower)  # transformers 5 flattened CLIPVisionModel
        self.projector = inner.multi_modal_projector
        self.newline = inner.image_newline
        self.add_heads(model, adapter, probe_layer)
        self.per_tile = adapter.tile_size // int(model.config.vision_config.patch_size)
        self.rows = grid[0] // adapter.tile_size
        assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"

    def add_heads(self, model, adapter, probe_layer: int):
        """The decoder and lm_head, and the training-only heads (not saved): per-patch colour / shape, question probe."""
        self.lm = model.model.language_model
        self.lm_head = model.lm_head
        hidden = model.config.text_config.hidden_size
        self.aux_colour = nn.Linear(hidden, len(COLORS) + 1)
        self.aux_shape = nn.Linear(hidden, len(SHAPES) + 1)
        self.probe = nn.Linear(hidden, len(KEYWORDS))
        self.probe_layer = probe_layer
        self.codec = PixelCodec(adapter)

    def position_ids(self, batch: int, n_prefix: int, order: torch.Tensor) -> torch.Tensor:
        """Rotary positions of the packed sequence; `order` (T,): 0.. over prefix + image, then each question's
        tokens numbered on from there (Llama: the positions themselves)."""
        return order[None].expand(batch, -1)

    def decoder_inputs(self, batch: int, length: int, image_start: int, image_tokens: int) -> dict:
        """What else the decoder call takes for the packed sequence (batch, length) whose image tokens are at
        image_start .. image_start + image_tokens - 1, from the last tile_features call; LLaVA: nothing."""
        return {}

    def vision_modules(self):
        """What stage 1 trains (with the aux heads): the vision tower and the projector."""
        return (self.vision, self.projector)

    def tile_features(self, pixels):
        """(B, T, 3, h, w) -> projected features (B, T, p*p, D), = hidden_states[-2][:, 1:] -> projector."""
        b, t = pixels.shape[:2]
        h = self.vision.pre_layrnorm(self.vision.embeddings(pixels.flatten(0, 1)))
        for layer in self.vision.encoder.layers[:-1]:  # vision_feature_layer = -2: the last layer is unused
            h = layer(h, None)
        return self.projector(h[:, 1:]).view(b, t, self.per_tile * self.per_tile, -1)

    def pack(self, feats):
        """Base tile, then the grid tiles as one (rows*p, cols*p) map with a newline token per row."""
        b, _, _, d = feats.shape
        p, r = self.per_tile, self.rows
        grid = feats[:, 1:].reshape(b, r, r, p, p, d).permute(0, 1, 3, 2, 4, 5).reshape(b, r * p, r * p, d)
        newline = self.newline.view(1, 1, 1, d).expand(b, r * p, 1, d)
        grid = torch.cat([grid, newline], dim=2).reshape(b, r * p * (r * p + 1), d)
        return torch.cat([feats[:, 0], grid], dim=1)

    def forward(self, pixels, prefix, suffix, lengths):
        """Answer/eos logits (B, K, 2, V) for K questions per image, and the projected tile features.

        suffix (B, K, L): per question, the text after the image + answer + eos, right-padded. The K
        questions share the prefix and image: each attends to them and to itself only (a tree mask)
        and its positions continue from the image, so every question sees exactly its own prompt."""
        feats = self.tile_features(pixels)
        image = self.pack(feats)
        embed = self.lm.embed_tokens
        b, k, l = suffix.shape
        base = prefix.numel() + image.shape[1]
        seq = torch.cat([embed(prefix).expand(b, -1, -1), image, embed(suffix).reshape(b, k * l, -1)], dim=1)
        positions = torch.cat([torch.arange(base), base + torch.arange(l).repeat(k)])
        mask = None
        if k > 1:
            total = base + k * l
            branch = torch.cat([torch.full((base,), -1), torch.arange(k).repeat_interleave(l)])
            q, kv = torch.arange(total)[:, None], torch.arange(total)[None, :]
            mask = ((kv < base) & (kv <= q)) | ((branch[:, None] == branch[None, :]) & (positions[None, :] <= positions[:, None]) & (kv >= base))
            mask = mask[None, None]
        out = self.lm(inputs_embeds=seq, attention_mask=mask, position_ids=self.position_ids(b, prefix.numel(), positions),
                      use_cache=False, output_hidden_states=self.training,
                      **self.decoder_inputs(b, seq.shape[1], prefix.numel(), image.shape[1]))
        hidden = out.last_hidden_state
        # per question: the answer is predicted at index len-3 of its suffix, the eos at len-2
        starts = base + torch.arange(k) * l
        pos = starts[None, :, None] + (lengths[..., None] - torch.tensor([3, 2])).clamp(min=0)
        picked = hidden.gather(1, pos.reshape(b, 2 * k, 1).expand(-1, -1, hidden.shape[-1]))
        logits = self.lm_head(picked).view(b, k, 2, -1)
        self.probe_logits = None
        if self.training:  # the question probe reads the last prompt position after `probe_layer` layers
            mid = out.hidden_states[self.probe_layer]
            at = mid.gather(1, pos[..., 0].reshape(b, k, 1).expand(-1, -1, mid.shape[-1]))
            self.probe_logits = self.probe(at)
        return logits, feats


TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # (1, S) per-token inputs of hf_inputs


def check_equivalence(trainer, model, adapter, samples, grid, args, labels_of=None):
    """The fast path (tensor packing, several questions per image under a tree mask) must equal the
    model's own get_image_features and forward on each question alone. Run once, on a few samples."""
    data = build_tensors(samples, adapter, grid, args, 4, seed=0, labels_of=labels_of)
    model.eval()
    worst_feats = worst_logits = 0.0
    checked = 0
    with torch.no_grad():
        pix = trainer.codec.decode(data["pixels"])
        logits, _ = trainer(pix, data["prefix"], data["suffix"], data["lengths"])
        for i, sample in enumerate(samples):
            for j, question in enumerate(data["questions"][i]):
                inputs = adapter.hf_inputs(sample["image"], question, grid)
                image_inputs = {key: value for key, value in inputs.items() if key not in TEXT_KEYS}
                batched = inputs["pixel_values"][None] if trainer.codec.flat else inputs["pixel_values"]
                assert torch.equal(pix[i], batched[0]), "cached pixels differ from the processor's"
                if j == 0:
                    ours = trainer.pack(trainer.tile_features(batched))[0]
                    theirs = model.model.get_image_features(**image_inputs).pooler_output
                    theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs
                    worst_feats = max(worst_feats, (ours - theirs.reshape(ours.shape)).abs().max().item())
                # the prompt + the answer token, as the model's own forward sees it (text tokens after the image)
                answer = data["suffix"][i, j, data["lengths"][i, j] - 2:][:1]
                extra = {"input_ids": answer, "attention_mask": torch.ones(1, dtype=torch.long),
                         "mm_token_type_ids": torch.zeros(1, dtype=torch.int32)}
                full = {key: torch.cat([inputs[key], extra[key][None].to(inputs[key].dtype)], dim=1)
                        for key in TEXT_KEYS if key in inputs}
                hf = model(**full, **image_inputs).logits[0, -2:]
                worst_logits = max(worst_logits, (logits[i, j] - hf).abs().max().item())
                checked += 1
    assert worst_feats < 1e-5 and worst_logits < 1e-4, (worst_feats, worst_logits)
    model.train()
    log(f"fast path == get_image_features / forward on {checked} questions about {len(samples)} images "
        f"(max |diff| features {worst_feats:.1e}, answer+eos logits {worst_logits:.1e})")


def fast_accuracy(trainer, data, adapter, batch=64):
    """First generated token == answer (greedy), per kind; cheap proxy used during training."""
    trainer.eval()
    correct = torch.zeros(len(KINDS))
    total = torch.zeros(len(KINDS))
    with torch.no_grad():
        for s in range(0, len(data["answer"]), batch):
            sl = slice(s, s + batch)
            logits, _ = trainer(trainer.codec.decode(data["pixels"][sl]), data["prefix"],
                                   data["suffix"][sl, :1], data["lengths"][sl, :1])
            hit = (logits[:, 0, 0].argmax(-1) == data["answer"][sl, 0]).float()
            correct.index_add_(0, data["kinds"][sl, 0], hit)
            total.index_add_(0, data["kinds"][sl, 0], torch.ones_like(hit))
    trainer.train()
    return (correct.sum() / total.sum()).item(), {k: round((c / max(t, 1)).item(), 3) for k, c, t in zip(KINDS, correct, total)}


def generate_accuracy(model, adapter, samples, grid, per_sample: bool = False):
    """Exact-match accuracy of the real model's greedy `generate` (full tokens)."""
    tokenizer = adapter.processor.tokenizer
    model.eval()
    hits = []
    with torch.no_grad():
        for sample in samples:
            inputs = adapter.hf_inputs(sample["image"], sample["question"], grid)
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            hits.append(text == sample["answer"])
    return hits if per_sample else sum(hits) / len(hits)


def aux_loss_of(trainer, feats, labels, bg_weight: float):
    """Per-patch colour + shape cross-entropy; background patches weighted by `bg_weight`."""
    loss = 0.0
    for head, target in ((trainer.aux_colour, labels[:, 0]), (trainer.aux_shape, labels[:, 1])):
        logits = head(feats)
        weight = torch.ones(logits.shape[-1])
        weight[0] = bg_weight
        loss = loss + F.cross_entropy(logits.flatten(0, 2), target.flatten(), weight=weight)
    return loss


def pretrain_vision(trainer, train, generator, args):
    """Stage 1: vision tower + projector + aux heads on the per-patch labels only (cheap: no decoder).

    Recognising shapes from 8-pixel patches is the slow part of this task; learning it first lets
    the decoder learn the lookup against features that already say what each patch shows."""
    params = [p for module in (*trainer.vision_modules(), trainer.aux_colour, trainer.aux_shape)
              for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    n = len(train["answer"])
    t0 = time.time()
    running = None
    for step in range(args.vision_steps):
        idx = torch.randint(0, n, (args.batch,), generator=generator)
        feats = trainer.tile_features(trainer.codec.decode(train["pixels"][idx]))
        loss = aux_loss_of(trainer, feats, train["labels"][idx], args.bg_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 250 == 0 or step + 1 == args.vision_steps:
            log(f"vision step {step + 1}/{args.vision_steps} aux {running:.3f} ({time.time() - t0:.0f}s)")


SAMPLES_SEED = 4242


def write_samples(model, adapter, grid, folder: Path) -> list[dict]:
    """One held-out sample per question kind as PNG + samples.jsonl (records format), for the README."""
    from trio_edge.data.synthetic_vqa import write_records

    candidates = make_split(len(KINDS), SAMPLES_SEED)
    folder.mkdir(parents=True, exist_ok=True)
    write_records(candidates, folder, images_dir="", records_file="samples.jsonl", names=[s["kind"] for s in candidates])
    correct = generate_accuracy(model, adapter, candidates, grid, per_sample=True)
    out = [{"kind": s["kind"], "question": s["question"], "answer": s["answer"], "model_correct": c}
           for s, c in zip(candidates, correct)]
    log(f"samples written to {folder}: {out}")
    return out


# ---- main ------------------------------------------------------------------------------------------
def make_parser(description: str) -> argparse.ArgumentParser:
    """The options both tiny models' training scripts share (the recipe's knobs)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="save_pretrained directory (e.g. trio_edge/assets/trio-tiny)")
    p.add_argument("--samples-out", default=None, help="also write sample images + samples.jsonl here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=3, help="CLIP layers (the last is unused: feature layer -2)")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--train-size", type=int, default=20_000)
    p.add_argument("--val-size", type=int, default=400)
    p.add_argument("--easy-size", type=int, default=4000, help="curriculum images (1-2 objects)")
    p.add_argument("--easy-steps", type=int, default=150, help="steps on easy scenes only (then fading out); 0: off")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--questions", type=int, default=4, help="questions per image per step (1-4)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--probe-weight", type=float, default=1.0, help="question probe loss weight (0: off)")
    p.add_argument("--probe-layer", type=int, default=2, help="decoder layers before the question probe")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--heldout", type=int, default=400, help="held-out samples for the final generate() accuracy")
    p.add_argument("--heldout-seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--eval-only", default=None, metavar="MODEL",
                   help="only measure the held-out accuracy of a saved model (alias or directory), e.g. trio-tiny")
    p.add_argument("--init", choices=["scaled", "hf"], default="scaled")
    p.add_argument("--bg-weight", type=float, default=0.2, help="aux loss weight of background patches")
    p.add_argument("--vision-steps", type=int, default=1000, help="stage 1: aux-only steps (vision tower + projector)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default="/tmp/trio-tiny-cache")
    p.add_argument("--bench", type=int, default=0, help="only time this many training steps")
    p.add_argument("--max-minutes", type=float, default=0, help="stop training after this long (0: no limit)")
    return p


def parse_args(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--tile", type=int, default=56)
    p.add_argument("--patch", type=int, default=8)
    return p.parse_args(argv)


def evaluate_only(args):
    """Greedy generate() accuracy of a saved model (alias or directory) on the held-out split."""
    from trio_edge.models.registry import load

    loaded = load(args.eval_only)
    grid = loaded.adapter.default_grid()
    heldout = make_split(args.heldout, args.heldout_seed)
    hits = generate_accuracy(loaded.model, loaded.adapter, heldout, grid, per_sample=True)
    per_kind = {kind: round(sum(h for h, s in zip(hits, heldout) if s["kind"] == kind)
                            / max(1, sum(s["kind"] == kind for s in heldout)), 4) for kind in KINDS}
    log(f"{args.eval_only}: held-out generate() accuracy {sum(hits) / len(hits):.4f} on n={len(hits)} "
        f"(seed {args.heldout_seed}, {loaded.adapter.image_token_count(grid)} image tokens) per kind {per_kind}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        return evaluate_only(args)
    train_model(args, build, lambda model, adapter, grid: Trainer(model, adapter, grid, probe_layer=args.probe_layer))


def train_model(args, build, make_trainer, labels_of=None):
    """The recipe (module docstring), for any family: `build(args)` -> (model, processor, adapter);
    `make_trainer(model, adapter, grid)` -> the family's fast training forward (Trainer's interface);
    `labels_of(sample)` -> per-image-token colour / shape labels in the trainer's feature order."""
    torch.manual_seed(args.seed)
    t_start = time.time()
    model, processor, adapter = build(args)
    grid = adapter.default_grid()
    m = adapter.image_token_count(grid)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, grid {grid[0]}x{grid[1]}, {m} image tokens")

    train = dataset(args.train_size if not args.bench else 512, args.seed + TRAIN_SEED_OFFSET, adapter, grid, args,
                    "train", questions_per_image=4, labels_of=labels_of)
    easy = dataset(args.easy_size if not args.bench else 128, args.seed + EASY_SEED_OFFSET, adapter, grid, args,
                   "easy", questions_per_image=4, objects=(1, 2), labels_of=labels_of) if args.easy_steps else None
    val = dataset(args.val_size, args.seed + VAL_SEED_OFFSET, adapter, grid, args, "val", labels_of=labels_of)
    trainer = make_trainer(model, adapter, grid)
    check_equivalence(trainer, model, adapter, make_split(3, args.seed + VAL_SEED_OFFSET), grid, args, labels_of)

    generator = torch.Generator().manual_seed(args.seed)
    if args.vision_steps and not args.bench:
        pretrain_vision(trainer, train, generator, args)

    decay = [p for n, p in trainer.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in trainer.named_parameters() if p.dim() < 2 or "embed" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    steps = args.bench or args.steps

    def lr_at(step):
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - args.warmup) / max(1, steps - args.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    streams = {"train": [train, None, 0]}
    if easy is not None:
        streams["easy"] = [easy, None, 0]

    def draw(name, count):
        """The next `count` indices of a stream (reshuffled every epoch, seeded)."""
        stream = streams[name]
        n = len(stream[0]["answer"])
        if stream[1] is None or stream[2] + count > n:
            stream[1], stream[2] = torch.randperm(n, generator=generator), 0
        out = stream[1][stream[2]:stream[2] + count]
        stream[2] += count
        return out

    def batch_of(step):
        """Curriculum: easy scenes only for `easy_steps`, then fading out linearly over as many steps."""
        share = 0.0 if easy is None else min(1.0, max(0.0, 2.0 - step / args.easy_steps))
        n_easy = int(round(args.batch * share))
        parts = [(streams["easy"][0], draw("easy", n_easy))] if n_easy else []
        if n_easy < args.batch:
            parts.append((train, draw("train", args.batch - n_easy)))
        width = max(d["suffix"].shape[-1] for d, _ in parts)
        cat = {key: torch.cat([d[key][i] for d, i in parts]) for key in ("pixels", "lengths", "answer", "labels", "keys")}
        cat["suffix"] = torch.cat([F.pad(d["suffix"][i], (0, width - d["suffix"].shape[-1]), value=processor.tokenizer.pad_token_id)
                                  for d, i in parts])
        return cat

    trainer.train()
    t_train = time.time()
    history = []
    running = None
    for step in range(steps):
        batch = batch_of(step)
        lengths = batch["lengths"][:, :args.questions]
        logits, feats = trainer(trainer.codec.decode(batch["pixels"]), train["prefix"],
                                       batch["suffix"][:, :args.questions, :int(lengths.max())], lengths)
        answers = batch["answer"][:, :args.questions]
        eos = torch.where(answers >= 0, train["eos"], -100)
        targets = torch.stack([answers, eos], -1)  # -100: no question in that slot (ignored)
        answer_loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), ignore_index=-100)
        labels = batch["labels"]
        aux_loss = aux_loss_of(trainer, feats, labels, args.bg_weight)
        loss = answer_loss + args.aux_weight * aux_loss
        if args.probe_weight:
            keys = batch["keys"][:, :args.questions]
            loss = loss + args.probe_weight * F.cross_entropy(trainer.probe_logits.flatten(0, 1), keys.flatten(),
                                                              ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        values = torch.tensor([answer_loss.item(), aux_loss.item()])
        running = values if running is None else 0.9 * running + 0.1 * values
        if args.bench:
            if step == 1:
                t_bench = time.time()
            continue
        if (step + 1) % args.eval_every == 0 or step + 1 == steps:
            acc, per_kind = fast_accuracy(trainer, val, adapter)
            elapsed = time.time() - t_train
            history.append({"step": step + 1, "answer_loss": round(running[0].item(), 4),
                            "aux_loss": round(running[1].item(), 4), "val_acc": round(acc, 4), "s": round(elapsed)})
            log(f"step {step + 1}/{steps} loss {running[0]:.3f} aux {running[1]:.3f} val {acc:.3f} {per_kind} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {elapsed / (step + 1):.2f}s/step")
            if args.max_minutes and elapsed > 60 * args.max_minutes:
                log("time limit reached")
                break
    if args.bench:
        log(f"bench: {(time.time() - t_bench) / (steps - 2) * 1e3:.0f} ms/step at batch {args.batch}")
        return
    train_seconds = time.time() - t_train
    log(f"trained {step + 1} steps in {train_seconds / 60:.1f} min")

    heldout = make_split(args.heldout, args.heldout_seed)
    t0 = time.time()
    acc = generate_accuracy(model, adapter, heldout, grid)
    log(f"held-out generate() accuracy {acc:.4f} on n={len(heldout)} (seed {args.heldout_seed}) in {time.time() - t0:.0f}s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        model.eval()
        model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        model.save_pretrained(out)
        processor.save_pretrained(out)
        summary = {"argv": sys.argv[1:], "args": vars(args), "parameters": n_params, "image_tokens": m,
                   "grid": list(grid), "steps": step + 1, "train_minutes": round(train_seconds / 60, 1),
                   "total_minutes": round((time.time() - t_start) / 60, 1), "heldout_accuracy": acc,
                   "heldout_n": len(heldout), "heldout_seed": args.heldout_seed, "history": history,
                   "torch": torch.__version__, "python": platform.python_version()}
        if args.samples_out:
            summary["samples"] = write_samples(model, adapter, grid, Path(args.samples_out))
        (Path(args.cache_dir) / "train_summary.json").write_text(json.dumps(summary, indent=1))
        log(f"saved to {out}; summary in {Path(args.cache_dir) / 'train_summary.json'}")


if __name__ == "__main__":
    main()
