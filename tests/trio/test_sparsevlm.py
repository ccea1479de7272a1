"""SparseVLM's fixed-shape rule (trio_edge/trio/sparsevlm.py) against a plain step-by-step implementation.

The plain implementation below follows the authors' released code (Gumpest/SparseVLMs: score.py
attn_postprocess_topk, modelling_sparse_llama.py's pruning branch, utils.py cluster_and_merge) line by line
with Python loops and lists, direct L2 distances, and the one documented change: ties go to the lower index
(the authors add 1e-6 noise to the density and leave TopK ties to the kernel).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import assert_fixed_shape_ops
from trio_edge.errors import ScheduleError
from trio_edge.trio import sparsevlm as sv
from trio_edge.trio.schedule import Cut

# ---- the plain implementation ---------------------------------------------------------------------------------


def plain_raters(embeds: torch.Tensor, image_start: int, num_image: int) -> list[int]:
    """Positions of the raters: text after the image whose mean (over image tokens) softmax relevance is above
    the mean relevance."""
    v = embeds[image_start:image_start + num_image].double()
    t = embeds[image_start + num_image:].double()
    relevance = [0.0] * t.shape[0]
    for i in range(v.shape[0]):
        logits = [float(v[i] @ t[j]) for j in range(t.shape[0])]
        top = max(logits)
        exps = [math.exp(x - top) for x in logits]
        total = sum(exps)
        for j in range(t.shape[0]):
            relevance[j] += exps[j] / total / v.shape[0]
    mean = sum(relevance) / len(relevance)
    return [image_start + num_image + j for j in range(len(relevance)) if relevance[j] > mean]


def plain_scores(probs: torch.Tensor, raters: list[int], image_start: int, num_image: int) -> list[float]:
    """probs (H, S, S) softmax attention: heads averaged, rows = raters, columns = image tokens, raters averaged."""
    heads = probs.shape[0]
    scores = []
    for col in range(image_start, image_start + num_image):
        total = 0.0
        for row in raters:
            total += sum(float(probs[h, row, col]) for h in range(heads)) / heads
        scores.append(total / len(raters))
    return scores


def plain_cluster_and_merge(x: torch.Tensor, cluster_num: int) -> tuple[list[list[float]], list[int]]:
    """utils.py cluster_and_merge with loops; returns merged rows and each token's cluster."""
    n, c = x.shape
    rows = x.double().tolist()
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j]))) / c ** 0.5 for j in range(n)]
            for i in range(n)]
    density = []
    for i in range(n):
        nearest = sorted(dist[i])[:cluster_num]
        density.append(math.exp(-sum(d * d for d in nearest) / cluster_num))
    dist_max = max(max(row) for row in dist)
    parent = []
    for i in range(n):
        best = dist_max  # no denser token: the largest distance overall
        for j in range(n):
            denser = density[j] > density[i] or (density[j] == density[i] and j < i)
            if denser and dist[i][j] < best:
                best = dist[i][j]
        parent.append(best)
    score = [parent[i] * density[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:cluster_num]
    cluster = []
    for i in range(n):
        best_c = 0
        for k in range(1, cluster_num):
            if dist[centres[k]][i] < dist[centres[best_c]][i]:
                best_c = k
        cluster.append(best_c)
    for k, centre in enumerate(centres):
        cluster[centre] = k
    merged = []
    for k in range(cluster_num):
        members = [i for i in range(n) if cluster[i] == k]
        weight = 1.0 / (len(members) + sv.MERGE_EPSILON)
        merged.append([sum(rows[i][d] * weight for i in members) for d in range(c)])
    return merged, cluster


def plain_choose(scores: list[float], keep: int) -> tuple[list[int], list[int]]:
    """attn_postprocess_topk + the recycling pick: kept (ascending) and recycled (descending score) indices."""
    m = len(scores)
    order = sorted(range(m), key=lambda i: (-scores[i], i))
    kept = sorted(order[:min(keep, m - 1)])
    deleted = [i for i in range(m) if i not in kept]  # torch.where(pred_score_vis == 0): ascending
    deleted_scores = [scores[i] for i in deleted]
    recycled_num = int(len(deleted) * 0.3) + 1
    by_score = sorted(range(len(deleted)), key=lambda p: (-deleted_scores[p], p))[:recycled_num]
    return kept, [deleted[p] for p in by_score]


def plain_cut(layer_out: torch.Tensor, scores: list[float], image_start: int, keep: int):
    """One pruning layer's output handling (modelling_sparse_llama.py), plain lists."""
    m = len(scores)
    kept, recycled = plain_choose(scores, keep)
    cluster_num = int(len(recycled) / 10) + 1
    rows = layer_out[0]
    merged, _ = plain_cluster_and_merge(torch.stack([rows[image_start + i] for i in recycled]), cluster_num)
    sequence = ([rows[j].double().tolist() for j in range(image_start)]
                + [rows[image_start + i].double().tolist() for i in kept] + merged
                + [rows[j].double().tolist() for j in range(image_start + m, rows.shape[0])])
    return kept, recycled, torch.tensor(sequence, dtype=torch.float64)


# ---- inputs ----------------------------------------------------------------------------------------------------


def causal_probs(gen, heads, length, dim=8):
    q, k = torch.randn(heads, length, dim, generator=gen), torch.randn(heads, length, dim, generator=gen)
    logits = q @ k.transpose(1, 2) / dim ** 0.5
    logits = logits.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), -torch.inf)
    return torch.softmax(logits, dim=-1)


def case(seed: int, *, before=3, image=40, after=9, dim=16, heads=4):
    gen = torch.Generator().manual_seed(seed)
    length = before + image + after
    embeds = torch.randn(length, dim, generator=gen)
    layer_out = torch.randn(1, length, dim, generator=gen)
    if seed % 3 == 0:  # duplicated image tokens: density and distance ties
        layer_out[0, before + 20:before + 30] = layer_out[0, before:before + 10]
    return embeds, causal_probs(gen, heads, length), layer_out


def module_scores(probs, raters_mask, image_start, num_image):
    """What the stage computes: head-averaged rows, then the rater mean over the image columns."""
    rows = probs.mean(dim=0)[:, image_start:image_start + num_image]  # (S, M)
    return sv.rater_scores(rows, raters_mask)


# ---- tests -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_raters_equal_plain(seed):
    embeds, _, _ = case(seed)
    mask = sv.rater_mask(embeds[None], torch.tensor(3), 40)
    assert torch.nonzero(mask).flatten().tolist() == plain_raters(embeds, 3, 40)
    assert mask.sum() > 0


@pytest.mark.parametrize("tail", [9, 12, 60, 200])
def test_raters_from_the_sequence_tail_equal_all_rows(tail):
    """The stages read only the last --max-text-tokens rows; any tail holding the text gives the same raters."""
    for seed in range(4):
        embeds, _, _ = case(seed)  # 3 + 40 + 9 tokens: the 9 after the image are the tail
        full = sv.rater_mask(embeds[None], torch.tensor(3), 40)
        assert torch.equal(sv.rater_mask(embeds[None], torch.tensor(3), 40, tail=tail), full)


def test_no_text_after_image_means_no_raters():
    embeds = torch.randn(20, 8)
    assert sv.rater_mask(embeds[None], torch.tensor(4), 16).sum() == 0
    assert sv.rater_mask(embeds[None], torch.tensor(4), 16, tail=30).sum() == 0


@pytest.mark.parametrize("seed", range(9))
@pytest.mark.parametrize("keep", [1, 7, 25, 39])
def test_cut_equals_plain(seed, keep):
    before, image = 3, 40
    embeds, probs, layer_out = case(seed, before=before, image=image)
    raters = plain_raters(embeds, before, image)
    expected_scores = plain_scores(probs, raters, before, image)
    mask = sv.rater_mask(embeds[None], torch.tensor(before), image)
    scores = module_scores(probs, mask, before, image)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=1e-5, atol=1e-7)
    if seed % 2:  # tied scores: ties go to the lower index in both
        scores = torch.round(scores * 40) / 40
        expected_scores = scores.tolist()
    kept, recycled, hidden, positions, carried = sv.prune_and_recycle(layer_out, scores, torch.tensor(before), keep,
                                                                      raters=mask)
    plain_kept, plain_recycled, plain_sequence = plain_cut(layer_out, expected_scores, before, keep)
    assert kept.tolist() == plain_kept
    assert recycled.tolist() == plain_recycled
    assert hidden.shape == (1, plain_sequence.shape[0], layer_out.shape[2])
    torch.testing.assert_close(hidden[0].double(), plain_sequence, rtol=1e-5, atol=1e-5)
    assert positions.tolist() == [list(range(plain_sequence.shape[0]))]
    # raters are text tokens after the image: they keep their rows, shifted by the image span's change
    shift = plain_sequence.shape[0] - layer_out.shape[1]
    assert torch.nonzero(carried).flatten().tolist() == [r + shift for r in raters]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cluster_num", [1, 2, 3, 5])
def test_cluster_and_merge_equals_plain(seed, cluster_num):
    gen = torch.Generator().manual_seed(100 + seed)
    n = [7, 12, 31][seed % 3]
    # a large part common to every token (LLaMA's massive activations): the distances must not suffer
    x = torch.randn(n, 6, generator=gen) + (seed % 2) * 300.0 * torch.randn(6, generator=gen)
    if seed % 4 == 0:
        x[n // 2:] = x[: n - n // 2].clone()  # exact duplicates: density ties, zero distances between tokens
    merged = sv.cluster_and_merge(x, cluster_num)
    expected, _ = plain_cluster_and_merge(x, cluster_num)
    torch.testing.assert_close(merged.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)


def test_counts_follow_the_authors_rounding():
    # int(deleted * 0.3) + 1 recycled, int(recycled / 10) + 1 merged
    assert sv.recycle_counts(576, 300) == (83, 9)
    assert sv.recycle_counts(10, 0) == (4, 1)
    assert sv.recycle_counts(5, 4) == (1, 1)
    assert sv.recycle_counts(576, 66) == (154, 16)


def test_tables_and_layers():
    assert sv.SPARSEVLM_TABLES[192] == (300, 200, 110)
    assert sv.SPARSEVLM_TABLES[128] == (303, 110, 36)
    assert sv.SPARSEVLM_TABLES[64] == (66, 30, 17)
    assert sv.sparsevlm_cut_layers(32) == (3, 7, 16)
    # the authors' model code prunes at 2/6/15 whatever the depth: LLaMA-13B's 40 layers, or any 17 or more
    assert sv.sparsevlm_cut_layers(40) == (3, 7, 16)
    assert sv.sparsevlm_cut_layers(17) == (3, 7, 16)
    # shallower: the same fractions of depth (pruning layer round(l * L / 32), halves up)
    assert sv.sparsevlm_cut_layers(16) == (2, 4, 9)
    assert sv.sparsevlm_cut_layers(4) == (1, 2, 3)
    schedule = sv.sparsevlm_schedule(num_layers=32, num_image_tokens=576, budget=192)
    assert schedule.cuts == (Cut(3, 300), Cut(7, 200), Cut(16, 110))
    # merged tokens come on top: 300 + 9, then 200 + int((int(109 * .3) + 1) / 10) + 1 = 200 + 4
    assert sv.image_tokens_after(schedule.cuts, 576) == [309, 204, 113]
    # LLaVA-NeXT: the released keep rule min(entry, v - 1) is absolute, so ~2,880 tokens keep the same counts
    assert sv.sparsevlm_schedule(num_layers=32, num_image_tokens=2880, budget=64).cuts[0] == Cut(3, 66)
    # 40 image tokens: min(entry, tokens - 1) = 39, and 1 deleted token merges back into 1: 40 again
    assert [c.keep for c in sv.sparsevlm_schedule(num_layers=4, num_image_tokens=40, budget=128).cuts] == [39, 39, 36]


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=100), "no table for --budget 100"),
    (dict(), "needs exactly one of"),
    (dict(budget=64, keep_ratio=0.2), "needs exactly one of"),
    (dict(cuts="0:10"), "LAYER must be within 1.."),
    (dict(cuts="2:40"), "KEEP must be within 1..39"),
])
def test_bad_schedules_say_what_to_do(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        sv.sparsevlm_schedule(num_layers=8, num_image_tokens=40, **kwargs)


def test_too_shallow_model_is_refused():
    with pytest.raises(ScheduleError, match="do not fit a 3-layer decoder"):
        sv.sparsevlm_cut_layers(3)


def test_keep_ratio_scales_the_table_shape():
    schedule = sv.sparsevlm_schedule(num_layers=32, num_image_tokens=576, keep_ratio=0.25)
    keeps = [c.keep for c in schedule.cuts]
    assert [c.layer for c in schedule.cuts] == [3, 7, 16]
    assert keeps[0] > keeps[1] > keeps[2]
    assert abs(schedule.layer_averaged_tokens(32, 576) - 0.25 * 576) <= 1.0


# ---- export ----------------------------------------------------------------------------------------------------


class CutGraph(torch.nn.Module):
    """Raters from the embeddings, scores from attention rows, one cut: the whole rule in one graph."""

    def __init__(self, num_image: int, keep: int, tail: int):
        super().__init__()
        self.num_image, self.keep, self.tail = num_image, keep, tail

    def forward(self, embeds, attention, layer_out, image_start):
        raters = sv.rater_mask(embeds, image_start, self.num_image, self.tail)
        span = image_start + torch.arange(self.num_image)
        scores = sv.rater_scores(attention.index_select(1, span), raters)
        return sv.prune_and_recycle(layer_out, scores, image_start, self.keep, raters=raters)


def test_cut_exports_to_onnx_and_matches(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    image, keep, dim = 40, 12, 16
    gen = torch.Generator().manual_seed(3)
    length = 3 + image + 9

    def inputs(before):
        n = before + image + 9
        return (torch.randn(1, n, dim, generator=gen), causal_probs(gen, 4, n).mean(0),
                torch.randn(1, n, dim, generator=gen), torch.tensor(before))

    module = CutGraph(image, keep, tail=16).eval()
    seq = torch.export.Dim("seq", min=image + 2, max=256)
    path = tmp_path / "sparsevlm_cut.onnx"
    torch.onnx.export(module, inputs(3), str(path), dynamo=True, opset_version=18,
                      dynamic_shapes=({1: seq}, {0: seq, 1: seq}, {1: seq}, None))
    model = onnx.load(str(path))
    assert_fixed_shape_ops(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for before in (3, 0, 7, 20):  # other prompt layouts and lengths than the traced one
        example = inputs(before)
        expected = module(*example)
        got = session.run(None, dict(zip(names, (t.numpy() for t in example))))
        assert got[0].tolist() == expected[0].tolist(), before  # kept
        assert got[1].tolist() == expected[1].tolist(), before  # recycled
        np.testing.assert_allclose(got[2], expected[2].numpy(), rtol=1e-5, atol=1e-5)
        assert got[3].tolist() == expected[3].tolist()
        assert got[4].tolist() == expected[4].tolist()
    assert length == 52


# ---- the whole method on a real model: the torch pipeline vs a from-scratch plain reference -------------------


@torch.no_grad()
def plain_sparsevlm_generate(model, inputs, schedule, max_new_tokens: int, stop_token_ids=()):
    """Greedy generation with SparseVLM, recomputed from scratch at every step on transformers' own layers
    (tests/reference.py): raters on the input embeddings, each cut N scored with layer N-1's head-by-head
    attention on its input, the layer's output pruned and recycled (choices made at prefill, reused later),
    positions renumbered. Returns (token ids, logits per step, kept original indices per cut)."""
    from reference import embed_prompt, head, reference_attention, run_layer

    embeds, image_start, num_image = embed_prompt(model, inputs)
    prompt_len = embeds.shape[0]
    raters = plain_raters(embeds, image_start, num_image)  # positions in the prompt (text after the image)
    cuts = {c.layer: (i, c.keep) for i, c in enumerate(schedule.cuts)}
    embed = model.get_input_embeddings()
    x, choices, tokens, all_logits, kept_first = embeds, [], [], [], None
    for _ in range(max_new_tokens):
        h, positions, m = x, torch.arange(x.shape[0]), num_image
        image_ids, kept_original, previous = list(range(num_image)), [], None
        for layer in range(len(model.model.language_model.layers)):
            if layer in cuts:
                index, keep = cuts[layer]
                if len(choices) <= index:  # prefill: choose on the prompt
                    probs = reference_attention(model, layer - 1, *previous)
                    rows = [r - (num_image - m) for r in raters]  # text rows shift with the image span
                    kept, recycled = plain_choose(plain_scores(probs, rows, image_start, m), keep)
                    _, cluster = plain_cluster_and_merge(torch.stack([h[image_start + i] for i in recycled]),
                                                         int(len(recycled) / 10) + 1)
                    choices.append((kept, recycled, cluster))
                kept, recycled, cluster = choices[index]
                clusters = max(cluster) + 1
                merged = []
                for k in range(clusters):
                    members = [recycled[i] for i in range(len(recycled)) if cluster[i] == k]
                    weight = 1.0 / (len(members) + sv.MERGE_EPSILON)
                    merged.append(sum(h[image_start + i] * weight for i in members))
                h = torch.cat([h[:image_start], h[[image_start + i for i in kept]], torch.stack(merged),
                               h[image_start + m:]])
                positions = torch.arange(h.shape[0])
                kept_original.append([image_ids[i] for i in kept if image_ids[i] >= 0])
                image_ids = [image_ids[i] for i in kept] + [-1] * clusters
                m = len(kept) + clusters
            previous = (h, positions)
            h = run_layer(model, layer, h, positions)
        logits = head(model, h[-1]).float()
        kept_first = kept_first if kept_first is not None else kept_original
        token = int(logits.argmax())
        tokens.append(token)
        all_logits.append(logits)
        if token in stop_token_ids:
            break
        x = torch.cat([x, embed(torch.tensor([token]))], dim=0)
        assert x.shape[0] == prompt_len + len(tokens)
    return tokens, all_logits, kept_first


@pytest.mark.parametrize("schedule_text", ["2:40", "1:60,2:30,3:12"])
def test_pipeline_equals_the_plain_reference(tiny, images, schedule_text):
    from helpers import PROMPTS, generate_with_logits, make_pipeline

    adapter = tiny.adapter
    schedule = sv.sparsevlm_schedule(num_layers=adapter.num_layers,
                                     num_image_tokens=adapter.image_token_count(adapter.default_grid()),
                                     cuts=schedule_text)
    pipe = make_pipeline(tiny, schedule, method="sparsevlm")
    for index in (0, 2):
        image, prompt = images[index], PROMPTS[index % len(PROMPTS)]
        result, logits = generate_with_logits(pipe, image, prompt, max_new_tokens=4)
        tokens, ref_logits, ref_kept = plain_sparsevlm_generate(
            tiny.model, adapter.hf_inputs(image, prompt, adapter.default_grid()), schedule, 4,
            adapter.stop_token_ids())
        assert result.kept == ref_kept
        assert result.token_ids == tokens
        for ours, theirs in zip(logits, ref_logits):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_eval_places_sparsevlm_at_its_own_layers(tiny):
    from trio_edge.calibration.evaluate import method_schedule

    adapter = tiny.adapter
    grid = adapter.default_grid()
    schedule, placement = method_schedule(adapter, grid, "sparsevlm", 1 / 3)
    assert [c.layer for c in schedule.cuts] == [1, 2, 3] and "SparseVLMs" in placement
    with pytest.raises(ScheduleError):  # layer 0 sees every token: a 4-layer model cannot reach 1/9
        method_schedule(adapter, grid, "sparsevlm", 1 / 9)
