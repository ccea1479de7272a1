"""Tests of TRIO token selection (reference greedy, fixed-shape twin, ONNX export) and peer rules."""

import math
import random

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as nnf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import assert_fixed_shape_ops
from trio_edge.exporters.trt_check import check_model
from trio_edge.errors import InputError
from trio_edge.trio.peers import random_select, uniform_select
from trio_edge.trio.selection import (
    _cluster_nms,
    cluster_iterations_needed,
    nms_select_fixed,
    select_tokens,
    visiting_order,
)

THRESHOLDS = [0.0, 0.5, 0.8, 1.0]


def brute_force(scores, features, keep, threshold):
    """Independent greedy in plain Python lists (only sim is computed the same way)."""
    unit = nnf.normalize(features.float(), dim=-1)
    sim = (unit @ unit.T).tolist()
    s = scores.tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    kept, dead = [], set()
    for i in order:
        if len(kept) < keep and i not in dead:
            kept.append(i)
            dead.update(j for j, v in enumerate(sim[i]) if v >= threshold)
    kept += [i for i in order if i not in kept][: keep - len(kept)]
    return sorted(kept)


def greedy_kept_count(scores, features, keep, threshold):
    """How many tokens greedy keeps before the fill (to prove the fill path is exercised)."""
    unit = nnf.normalize(features.float(), dim=-1)
    above = (unit @ unit.T >= threshold).tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores.tolist()[i], i))
    kept, dead = 0, set()
    for i in order:
        if kept < keep and i not in dead:
            kept += 1
            dead.update(j for j, a in enumerate(above[i]) if a)
    return kept


def random_case(rng: random.Random):
    """One random input: tied scores, duplicated rows and low-dim clusters all show up often."""
    m = rng.choice([1, 2, 3, 5, 8, 13, rng.randint(1, 200)])
    d = rng.choice([1, 2, 3, 8, 16, 32])
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    if rng.random() < 0.5:  # few distinct integer values: many ties
        scores = torch.randint(0, rng.randint(1, 4), (m,), generator=gen).float()
    else:
        scores = torch.randn(m, generator=gen)
    features = torch.randn(m, d, generator=gen)
    if rng.random() < 0.5 and m > 1:  # copy some rows onto others: forced suppression
        src = torch.randint(0, m, (m // 2,), generator=gen)
        dst = torch.randint(0, m, (m // 2,), generator=gen)
        features[dst] = features[src] * (1 + torch.rand(m // 2, 1, generator=gen))
    if rng.random() < 0.1:
        features[0] = 0.0  # a zero row normalises to zero: similarity 0 with everything
    threshold = rng.choice(THRESHOLDS + [rng.uniform(-0.2, 1.0)])
    keep = rng.randint(1, m)
    return scores, features, keep, threshold


CASES = [random_case(random.Random(seed)) for seed in range(320)]


def test_cases_cover_ties_duplicates_and_fill():
    tied = sum(len(set(s.tolist())) < len(s) for s, *_ in CASES)
    filled = sum(greedy_kept_count(s, f, k, t) < k for s, f, k, t in CASES)
    assert tied >= 50 and filled >= 30, (tied, filled)
    assert {t for *_, t in CASES} >= set(THRESHOLDS)


@pytest.mark.parametrize("chunk", range(8))
def test_select_tokens_matches_brute_force(chunk):
    for n, (scores, features, keep, threshold) in enumerate(CASES[chunk::8]):
        got = select_tokens(scores, features, keep, threshold)
        assert got.dtype == torch.long and got.shape == (keep,)
        assert got.tolist() == brute_force(scores, features, keep, threshold), (chunk, n)


@pytest.mark.parametrize("block", [3, 16])
def test_blocks_settle_in_order_to_the_reference(block):
    """Many small blocks: suppression carried from earlier blocks, iterations counted per block."""
    for n, (scores, features, keep, threshold) in enumerate(CASES[:160]):
        if threshold >= 0.999:  # duplicated rows sit within an ulp of 1.0; block shapes may round them apart
            continue
        needed = cluster_iterations_needed(scores, features, threshold, keep, block=block)
        kept, converged = nms_select_fixed(scores, features, keep, threshold, needed, block=block)
        assert bool(converged) and torch.equal(kept, select_tokens(scores, features, keep, threshold)), n
        if needed > 1:
            assert not bool(nms_select_fixed(scores, features, keep, threshold, needed - 1, block=block)[1]), n
        # the eager form, which also skips the blocks after the keep-th survivor's
        kept, converged = nms_select_fixed(scores, features, keep, threshold, scores.shape[0] + 1,
                                           stop_at_fixed_point=True, block=block)
        assert bool(converged) and torch.equal(kept, select_tokens(scores, features, keep, threshold)), n


def test_eager_form_skips_the_blocks_after_the_keep_th_survivor():
    """Nothing similar: the first `keep` tokens survive, so only their blocks run; the rest are marked unkept."""
    scores = torch.arange(40, 0, -1, dtype=torch.float32)  # visiting order 0, 1, 2, ...
    features = torch.eye(40)
    _, keep_vec, converged, _ = _cluster_nms(scores, features, 6, 0.8, 41, stop_at_fixed_point=True, block=4)
    assert bool(converged) and keep_vec.tolist() == [1.0] * 8 + [0.0] * 32  # blocks 0-1 run, 2-9 skipped
    _, keep_vec, _, _ = _cluster_nms(scores, features, 6, 0.8, 41, block=4)  # the graph's form runs them all
    assert keep_vec.tolist() == [1.0] * 40


@pytest.mark.parametrize("chunk", range(8))
def test_fixed_matches_reference_when_converged(chunk):
    for n, (scores, features, keep, threshold) in enumerate(CASES[chunk::8]):
        needed = cluster_iterations_needed(scores, features, threshold, keep)
        expected = select_tokens(scores, features, keep, threshold)
        for iterations in (needed, needed + 2):
            kept, converged = nms_select_fixed(scores, features, keep, threshold, iterations)
            assert bool(converged) and kept.dtype == torch.long, (chunk, n)
            assert torch.equal(kept, expected), (chunk, n, iterations)
        if needed > 1:  # one step short has not reached the fixed point yet
            assert not bool(nms_select_fixed(scores, features, keep, threshold, needed - 1)[1])
        # the eager runtime's form: stop at the fixed point, never short of it
        kept, converged = nms_select_fixed(scores, features, keep, threshold, scores.shape[0] + 1,
                                           stop_at_fixed_point=True)
        assert bool(converged) and torch.equal(kept, expected), (chunk, n)


def clustered_case(m, d, clusters, spread, seed):
    """Rows around a few centres (heavy suppression at 0.8 when tight) with scores that tie often."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=generator)
    members = centres[torch.randint(0, clusters, (m,), generator=generator)]
    features = members + spread * torch.randn(m, d, generator=generator)
    scores = torch.randint(0, max(2, m // 3), (m,), generator=generator).float()
    return scores, features


@pytest.mark.parametrize("m", [1, 2, 255, 257, 700, 2928])
def test_kept_buffer_equals_greedy_from_one_token_to_thousands(m):
    """The kept-buffer form (graph: every block, fixed steps; eager: stops at the fixed point) against the greedy
    reference, for keep = 1, a fifth, and all M; clustered rows so that the buffer suppresses across blocks."""
    for seed, (clusters, spread) in enumerate([(max(1, m // 8), 0.3), (3, 1.0), (m, 0.0)]):
        scores, features = clustered_case(m, 32, clusters, spread, seed)
        for keep in sorted({1, max(1, m // 5), m}):
            expected = select_tokens(scores, features, keep, 0.8)
            needed = cluster_iterations_needed(scores, features, 0.8, keep)
            kept, converged = nms_select_fixed(scores, features, keep, 0.8, max(needed, 2))
            assert bool(converged) and torch.equal(kept, expected), (m, seed, keep)
            kept, converged = nms_select_fixed(scores, features, keep, 0.8, m + 1, stop_at_fixed_point=True)
            assert bool(converged) and torch.equal(kept, expected), (m, seed, keep)


@pytest.mark.parametrize("keep", [1, 5, 40, 100])
def test_all_duplicate_rows_keep_one_and_fill_by_score(keep):
    """Every row the same direction: greedy keeps the best token, suppresses the rest, and the fill takes the next
    best by score (lower index on ties), across several blocks."""
    scores = torch.tensor([float(i % 7) for i in range(100)])
    features = torch.ones(100, 8) * torch.arange(1, 101, dtype=torch.float32)[:, None]  # norms differ, not direction
    expected = select_tokens(scores, features, keep, 0.8)
    assert expected.tolist() == sorted(visiting_order(scores)[:keep].tolist())
    for block in (3, 16, 256):
        kept, converged = nms_select_fixed(scores, features, keep, 0.8, 4, block=block)
        assert bool(converged) and torch.equal(kept, expected), block


def test_fill_when_fewer_than_keep_survive_across_blocks():
    """Four directions, keep 30: four survivors (in four different blocks), 26 filled in visiting order."""
    generator = torch.Generator().manual_seed(3)
    directions = torch.eye(4, 16)
    features = directions[torch.arange(120) % 4] * (1 + torch.rand(120, 1, generator=generator))
    scores = torch.randn(120, generator=generator)
    assert greedy_kept_count(scores, features, 30, 0.8) == 4
    expected = select_tokens(scores, features, 30, 0.8)
    for block in (7, 40, 256):
        kept, converged = nms_select_fixed(scores, features, 30, 0.8, 3, block=block)
        assert bool(converged) and torch.equal(kept, expected), block


def test_buffer_holds_only_the_first_keep_survivors():
    """Past the keep-th survivor the buffer is full: later tokens may be marked kept although a survivor outside
    the buffer suppresses them, yet the result is the greedy one (it never reads them)."""
    scores = torch.arange(40, 0, -1, dtype=torch.float32)  # visit 0, 1, 2, ...
    features = torch.eye(40)
    features[20:] = features[2:22].clone()  # 20.. duplicate 2..21: survivors 2..21 suppress them
    _, keep_vec, converged, _ = _cluster_nms(scores, features, 3, 0.8, 4, block=4)
    assert bool(converged) and keep_vec[:3].tolist() == [1.0] * 3
    assert keep_vec.sum() > 20  # beyond the buffer's 3 survivors, duplicates are not seen
    assert nms_select_fixed(scores, features, 3, 0.8, 4, block=4)[0].tolist() == [0, 1, 2]
    kept, _ = nms_select_fixed(scores, features, 22, 0.8, 4, block=4)
    assert torch.equal(kept, select_tokens(scores, features, 22, 0.8))


def test_visiting_order_is_the_stable_descending_sort():
    for scores, *_ in CASES[:120]:
        expected = torch.sort(scores, descending=True, stable=True).indices
        assert visiting_order(scores).tolist() == expected.tolist(), scores.tolist()


def exact_features(m, d, generator):
    """Rows with 1 or 4 entries of +-1: unit norms 1 or 1/2 exactly, so every cosine similarity is a multiple of
    1/4 (or 1/2) computed exactly in any summation order: similarities sit exactly on thresholds 0.25 .. 1."""
    rows = torch.zeros(m, d)
    for r in range(m):
        width = 1 if torch.rand(1, generator=generator) < 0.3 else 4
        columns = torch.randperm(d, generator=generator)[:width]
        rows[r, columns] = torch.randint(0, 2, (width,), generator=generator).float() * 2 - 1
    return rows * (1 + torch.randint(0, 3, (m, 1), generator=generator).float())  # norms do not matter


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75, 1.0])
def test_exact_on_threshold_ties_and_heavy_suppression(threshold):
    """Ties in score, similarities exactly on the threshold, heavy suppression (few distinct directions, so the
    fill decides much of the result): equal to the greedy reference, in one block or in many."""
    generator = torch.Generator().manual_seed(int(threshold * 100))
    filled = 0
    for n in range(60):
        m, d = int(torch.randint(8, 90, (1,), generator=generator)), int(torch.randint(4, 7, (1,), generator=generator))
        features = exact_features(m, d, generator)
        scores = torch.randint(0, 5 if n % 2 else 1000, (m,), generator=generator).float()
        keep = int(torch.randint(1, m + 1, (1,), generator=generator))
        expected = select_tokens(scores, features, keep, threshold)
        filled += greedy_kept_count(scores, features, keep, threshold) < keep
        for block in (5, 384):
            kept, converged = nms_select_fixed(scores, features, keep, threshold, m + 1, block=block)
            assert bool(converged) and torch.equal(kept, expected), (n, block)
            needed = cluster_iterations_needed(scores, features, threshold, keep, block=block)
            assert torch.equal(nms_select_fixed(scores, features, keep, threshold, needed, block=block)[0], expected)
    assert filled >= 20, filled


def test_convergence_needs_only_the_settled_prefix():
    """A long suppression chain after the keep-th survivor does not hold up convergence."""
    scores, features = chain(m=24)
    full = cluster_iterations_needed(scores, features, 0.95)
    early = cluster_iterations_needed(scores, features, 0.95, keep=3)
    assert early < full
    kept, converged = nms_select_fixed(scores, features, 3, 0.95, early)
    assert bool(converged) and kept.tolist() == select_tokens(scores, features, 3, 0.95).tolist() == [0, 2, 4]


def chain(m=20, threshold=0.95):
    """Points on an arc: neighbours are similar (>= threshold), next-but-one are not."""
    step = 0.75 * math.acos(threshold)
    assert math.cos(step) >= threshold > math.cos(2 * step)
    assert (m + 1) * step < 2 * math.pi  # no wrap-around: the arc never meets its start
    angles = torch.arange(m, dtype=torch.float64) * step
    features = torch.stack([angles.cos(), angles.sin()], dim=1).float()
    return torch.arange(m, 0, -1).float(), features  # visit along the chain


def test_chain_needs_many_iterations():
    scores, features = chain()
    # Greedy keeps 0, which suppresses 1, so 2 survives and suppresses 3, and so on.
    assert select_tokens(scores, features, 10, 0.95).tolist() == list(range(0, 20, 2))
    needed = cluster_iterations_needed(scores, features, 0.95)
    assert needed >= 10  # each step settles only about one more link of the chain
    kept, converged = nms_select_fixed(scores, features, 10, 0.95, 3)
    assert not bool(converged)
    # in blocks of 2 the chain is cut into pieces that each settle in 2 steps
    kept, converged = nms_select_fixed(scores, features, 10, 0.95, 3, block=2)
    assert bool(converged) and kept.tolist() == list(range(0, 20, 2))
    kept, converged = nms_select_fixed(scores, features, 10, 0.95, needed)
    assert bool(converged) and kept.tolist() == list(range(0, 20, 2))


@st.composite
def inputs(draw, distinct):
    m = draw(st.integers(1, 40))
    d = draw(st.integers(1, 6))
    if distinct:
        scores = draw(st.lists(st.integers(-1000, 1000), min_size=m, max_size=m, unique=True))
    else:
        scores = draw(st.lists(st.integers(-3, 3), min_size=m, max_size=m))
    rows = draw(st.lists(st.lists(st.integers(-3, 3), min_size=d, max_size=d), min_size=m, max_size=m))
    keep = draw(st.integers(1, m))
    threshold = draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0]))
    return torch.tensor(scores).float(), torch.tensor(rows).float(), keep, threshold


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs(distinct=False))
def test_result_is_a_valid_index_set(case):
    scores, features, keep, threshold = case
    kept = select_tokens(scores, features, keep, threshold)
    assert kept.shape == (keep,) and kept.dtype == torch.long
    assert kept.tolist() == sorted(set(kept.tolist()))
    assert 0 <= kept.min() and kept.max() < len(scores)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs(distinct=True), st.randoms(use_true_random=False))
def test_kept_set_ignores_input_order(case, rnd):
    scores, features, keep, threshold = case
    perm = list(range(len(scores)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    unit = nnf.normalize(features, dim=-1)
    unit_p = nnf.normalize(features[perm], dim=-1)
    # The rule promises order-independence for identical similarities; BLAS may round a
    # permuted matmul differently in the last bit, which is not what this test is about.
    assume(torch.equal(unit_p @ unit_p.T, (unit @ unit.T)[perm][:, perm]))
    kept = select_tokens(scores, features, keep, threshold)
    kept_p = select_tokens(scores[perm], features[perm], keep, threshold)
    assert sorted(perm[kept_p].tolist()) == kept.tolist()


class FixedSelect(torch.nn.Module):
    def __init__(self, block=384):
        super().__init__()
        self.block = block

    def forward(self, scores, features):
        return nms_select_fixed(scores, features, keep=10, threshold=0.8, iterations=8, block=self.block)


@pytest.mark.parametrize("block", [384, 16])
def test_fixed_select_exports_to_onnx(tmp_path, block):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "select.onnx"
    example = (torch.randn(64), torch.randn(64, 16))
    torch.onnx.export(FixedSelect(block).eval(), example, str(path), dynamo=True, opset_version=18)
    model = onnx.load(str(path))
    assert_fixed_shape_ops(model)

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    gen = torch.Generator().manual_seed(7)
    converged_runs = 0
    for n in range(20):
        scores = torch.randint(0, 4, (64,), generator=gen).float() if n % 2 else torch.randn(64, generator=gen)
        features = torch.randn(64, 16, generator=gen)
        features[32:48] = features[:16] * 2  # duplicates: exercises suppression
        kept, converged = session.run(None, dict(zip(names, (scores.numpy(), features.numpy()))))
        assert kept.dtype == np.int64 and kept.shape == (10,)
        eager_kept, eager_converged = FixedSelect(block)(scores, features)
        assert bool(converged) == bool(eager_converged) and kept.tolist() == eager_kept.tolist(), n
        if converged:
            converged_runs += 1
            assert kept.tolist() == select_tokens(scores, features, 10, 0.8).tolist(), n
    assert converged_runs >= 15


class LargeSelect(torch.nn.Module):
    def __init__(self, keep, iterations):
        super().__init__()
        self.keep, self.iterations = keep, iterations

    def forward(self, scores, features):
        return nms_select_fixed(scores, features, self.keep, 0.8, self.iterations)


def test_select_over_more_tokens_than_tensorrt_topk_takes(tmp_path):
    """4,100 image tokens (several images' worth) keeping 3,900: every sort and top-k of the graph runs in TopK
    rounds of at most 3,840 (TensorRT's limit; trio-check finds no error) and equals the greedy reference."""
    m, keep = 4100, 3900
    cases = [clustered_case(m, 32, clusters, spread, seed) for seed, (clusters, spread) in
             enumerate([(600, 0.3), (4100, 0.0), (40, 1.0)])]
    iterations = max(cluster_iterations_needed(scores, features, 0.8, keep) for scores, features in cases)
    path = tmp_path / "select.onnx"
    torch.onnx.export(LargeSelect(keep, iterations).eval(), cases[0], str(path), dynamo=True, opset_version=18)
    report = check_model(path)
    assert report.ok, [finding.message for finding in report.errors]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for scores, features in cases:
        kept, converged = session.run(None, dict(zip(names, (scores.numpy(), features.numpy()))))
        assert bool(converged) and kept.tolist() == select_tokens(scores, features, keep, 0.8).tolist()


# ---- peers -------------------------------------------------------------------------------


def test_random_is_seeded_subset():
    a = random_select(100, 10, seed=3)
    assert a.tolist() == random_select(100, 10, seed=3).tolist()
    assert a.tolist() != random_select(100, 10, seed=4).tolist()
    assert a.dtype == torch.long and a.tolist() == sorted(set(a.tolist())) and a.max() < 100


def test_uniform_stride():
    assert uniform_select(10, 4).tolist() == [0, 2, 5, 7]
    assert uniform_select(576, 576).tolist() == list(range(576))
    assert uniform_select(576, 144).tolist() == list(range(0, 576, 4))


@pytest.mark.parametrize(
    "call",
    [
        lambda k: select_tokens(torch.rand(576), torch.rand(576, 4), k),
        lambda k: nms_select_fixed(torch.rand(576), torch.rand(576, 4), k, 0.8, 4),
        lambda k: random_select(576, k, seed=0),
        lambda k: uniform_select(576, k),
    ],
)
def test_keep_validation_names_the_numbers(call):
    with pytest.raises(InputError, match=r"keep=700 is larger than the 576 image tokens; lower"):
        call(700)
    with pytest.raises(InputError, match=r"keep=0 .*576"):
        call(0)


def test_shape_and_threshold_validation():
    with pytest.raises(InputError, match="1-D"):
        select_tokens(torch.rand(4, 1), torch.rand(4, 2), 2)
    with pytest.raises(InputError, match="5 image tokens"):
        select_tokens(torch.rand(5), torch.rand(4, 2), 2)
    with pytest.raises(InputError, match="finite"):
        select_tokens(torch.rand(4), torch.rand(4, 2), 2, threshold=float("nan"))
