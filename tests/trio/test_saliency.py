"""TRIO proxy saliency: trio_edge's select stage (proxy layer evaluated for the 4 supervised queries only)
against autograd through transformers' own decoder layer on the full sequence (tests/reference.py)."""

import pytest
import torch
from helpers import PROMPTS
from reference import embed_prompt, reference_saliency, run_layer, supervised_positions

from trio_edge.trio.saliency import NUM_SUPERVISED, proxy_loss, supervised_rows
from trio_edge.trio.schedule import Schedule
from trio_edge.trio.select_module import SelectStage

RTOL = 1e-5


@pytest.fixture(scope="module")
def prompt_state(tiny, images):
    """Embeddings of a real prompt (S, D), the image span start and M."""
    adapter = tiny.adapter
    inputs = adapter.hf_inputs(images[0], PROMPTS[0], adapter.default_grid())
    with torch.no_grad():
        return embed_prompt(tiny.model, inputs)


def hidden_entering(tiny, embeds, positions, layer):
    h = embeds
    with torch.no_grad():
        for index in range(layer):
            h = run_layer(tiny.model, index, h, positions)
    return h


def pruned_sequence(embeds, image_start, m, positions_mode):
    """Drop every third image token: a sequence as a later cut sees it, with renumbered or original positions."""
    local = torch.tensor([i for i in range(m) if i % 3 != 1])
    rows = torch.cat([torch.arange(image_start), image_start + local, torch.arange(image_start + m, embeds.shape[0])])
    positions = torch.arange(rows.shape[0]) if positions_mode == "renumber" else rows.clone()
    return embeds[rows], positions


def stage_saliency(tiny, layer, hidden, positions, m, runtime_form=False):
    stage = SelectStage(tiny.adapter.decoder, layer, m, 1, Schedule(), 4, runtime_form=runtime_form)
    with torch.no_grad():  # the select stage must re-enable grad itself, as in the backends
        return stage.saliency(hidden[None], positions[None])


def assert_close_relative(actual, expected):
    scale = float(expected.abs().max())
    assert scale > 0
    error = float((actual - expected).abs().max())
    assert error <= RTOL * scale, f"max abs error {error:.3e} > {RTOL} x max saliency {scale:.3e}"


@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("positions_mode", ["renumber", "original", "full"])
@pytest.mark.parametrize("runtime_form", [False, True], ids=["export-form", "runtime-form"])
def test_stage_saliency_matches_full_sequence_autograd(tiny, prompt_state, layer, positions_mode, runtime_form):
    """Both forms: the exported one and the torch runtime's (lm_head through FewRowsHead)."""
    embeds, image_start, m = prompt_state
    if positions_mode == "full":
        hidden, positions = embeds, torch.arange(embeds.shape[0])
    else:
        hidden, positions = pruned_sequence(embeds, image_start, m, positions_mode)
        if positions_mode == "original":
            assert not torch.equal(positions, torch.arange(positions.shape[0]))  # really has gaps
    hidden = hidden_entering(tiny, hidden, positions, layer)
    ours = stage_saliency(tiny, layer, hidden, positions, m, runtime_form)
    expected = reference_saliency(tiny.model, layer, hidden, positions)
    assert ours.shape == expected.shape == (hidden.shape[0],)
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    assert_close_relative(ours, expected)
    # The final prompt token is not supervised and nothing supervised attends to it.
    assert float(ours[-1]) == 0.0
    # Image tokens do get gradient.
    assert float(ours[image_start:image_start + 5].abs().min()) > 0


def test_positions_matter(tiny, prompt_state):
    """Renumbered and original positions give different saliencies (the test above is discriminative)."""
    embeds, image_start, m = prompt_state
    hidden, original = pruned_sequence(embeds, image_start, m, "original")
    renumbered = torch.arange(hidden.shape[0])
    a = stage_saliency(tiny, 0, hidden, original, m)
    b = stage_saliency(tiny, 0, hidden, renumbered, m)
    assert float((a - b).abs().max()) > 100 * RTOL * float(b.abs().max())


def test_supervised_rows_are_s_minus_5_to_s_minus_2():
    for seq_len in (6, 7, 40, 123):
        rows = supervised_rows(seq_len, torch.float32, "cpu")
        assert rows.shape == (NUM_SUPERVISED, seq_len)
        assert torch.equal(rows.sum(dim=1), torch.ones(NUM_SUPERVISED))
        assert set(rows.unique().tolist()) <= {0.0, 1.0}
        assert rows.argmax(dim=1).tolist() == list(range(seq_len - 5, seq_len - 1))
        assert rows.argmax(dim=1).tolist() == supervised_positions(seq_len)


def test_supervised_rows_behaviourally(tiny, prompt_state):
    """The stage's saliency equals the reference supervised at S-5..S-2 and not at a shifted window."""
    embeds, _, m = prompt_state
    positions = torch.arange(embeds.shape[0])
    s = embeds.shape[0]
    ours = stage_saliency(tiny, 0, embeds, positions, m)
    shifted = reference_saliency(tiny.model, 0, embeds, positions, supervised=list(range(s - 4, s)))
    expected = reference_saliency(tiny.model, 0, embeds, positions, supervised=list(range(s - 5, s - 1)))
    assert_close_relative(ours, expected)
    assert float((ours - shifted).abs().max()) > 100 * RTOL * float(shifted.abs().max())


def test_proxy_loss_is_mean_self_argmax_cross_entropy():
    logits = torch.randn(4, 37, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=-1))
    torch.testing.assert_close(proxy_loss(logits), expected, rtol=1e-6, atol=1e-6)
