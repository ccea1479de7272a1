"""The decoder segment's two forms (export: reads the filled slots, one scatter of the new ones; runtime: in
place + fused SDPA) compute the same thing, and both write only the slots of the new positions."""

from __future__ import annotations

import pytest
import torch

SENTINEL = 7.0


def run_steps(segment, kv, hidden, steps):
    """Prefill `hidden` at slot 0, then `steps` single-token decode calls; returns outputs and final kv."""
    outputs, t = [], hidden.shape[1]
    with torch.no_grad():
        out, kv = segment(hidden, torch.arange(t)[None], torch.tensor(0), kv)
        outputs.append(out)
        for step in range(steps):
            token = hidden[:, step % t:step % t + 1] * 0.5
            out, kv = segment(token, torch.tensor([[t + step]]), torch.tensor(t + step), kv)
            outputs.append(out)
    return outputs, kv


@pytest.mark.parametrize("with_head", [False, True])
def test_in_place_form_equals_export_form(tiny, with_head):
    decoder = tiny.adapter.decoder
    export_form = decoder.segment(0, decoder.num_layers, with_head).eval()
    runtime_form = decoder.segment(0, decoder.num_layers, with_head, in_place=True).eval()
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 9, decoder.hidden_size, generator=generator)
    kv_shape = (decoder.num_layers, 2, decoder.num_kv_heads, 16, decoder.head_dim)
    expected, kv_expected = run_steps(export_form, torch.full(kv_shape, SENTINEL), hidden, steps=4)
    buffer = torch.full(kv_shape, SENTINEL)
    got, kv_got = run_steps(runtime_form, buffer, hidden, steps=4)
    assert kv_got is buffer  # written in place, nothing allocated
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kv_got, kv_expected, atol=1e-5, rtol=1e-5)
    assert torch.all(kv_got[:, :, :, 13:] == SENTINEL)  # 9 prompt + 4 decode slots written, no others


def test_in_place_form_ignores_stale_slots(tiny):
    """Slots past the current length hold an earlier request's values; the causal mask must hide them."""
    decoder = tiny.adapter.decoder
    segment = decoder.segment(0, decoder.num_layers, True, in_place=True).eval()
    hidden = torch.randn(1, 5, decoder.hidden_size, generator=torch.Generator().manual_seed(1))
    kv_shape = (decoder.num_layers, 2, decoder.num_kv_heads, 12, decoder.head_dim)
    clean, _ = run_steps(segment, torch.zeros(kv_shape), hidden, steps=2)
    stale, _ = run_steps(segment, torch.randn(kv_shape) * 100, hidden, steps=2)
    for want, have in zip(clean, stale):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)


def test_in_place_form_refuses_a_multi_token_call_after_slot_0(tiny):
    decoder = tiny.adapter.decoder
    segment = decoder.segment(0, decoder.num_layers, False, in_place=True).eval()
    hidden = torch.randn(1, 3, decoder.hidden_size)
    with pytest.raises(ValueError, match="prefills from slot 0"):
        kv = torch.zeros((decoder.num_layers, 2, decoder.num_kv_heads, 8, decoder.head_dim))
        segment(hidden, torch.arange(4, 7)[None], torch.tensor(4), kv)


def test_export_form_writes_only_the_new_slots(tiny):
    """The export form's cache output is the input with the T new slots written, nothing else changed."""
    decoder = tiny.adapter.decoder
    segment = decoder.segment(0, decoder.num_layers, True).eval()
    kv_shape = (decoder.num_layers, 2, decoder.num_kv_heads, 16, decoder.head_dim)
    stale = torch.randn(kv_shape, generator=torch.Generator().manual_seed(2)) * 100
    hidden = torch.randn(1, 3, decoder.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, kv = segment(hidden, torch.arange(5, 8)[None], torch.tensor(5), stale)
    changed = (kv != stale).any(dim=(0, 1, 2, 4))  # per slot
    assert changed.tolist() == [False] * 5 + [True] * 3 + [False] * 8


def test_filled_slots_reads_exactly_one_layers_past():
    from trio_edge.models.llama_decoder import filled_slots

    kv = torch.randn(3, 2, 4, 11, 8, generator=torch.Generator().manual_seed(0))
    for layer in range(3):
        for past in (0, 1, 7, 11):
            keys, values = filled_slots(kv, layer, past)
            assert torch.equal(keys, kv[layer, 0, :, :past]) and torch.equal(values, kv[layer, 1, :, :past])


def test_fused_gqa_form_on_per_layer_views_equals_export_form(tiny):
    """The onnxruntime target's form: each layer's cache a view of the one buffer (cache_inputs), attention as the
    group_query_attention op, its presents written back into the buffer (updated_cache, the path a backend that
    does not bind them in place takes). Same outputs as the export form; the buffer keeps its identity and holds
    the prompt and decode slots."""
    from trio_edge.artifact.graphs import GraphKind, GraphSpec, cache_inputs, layer_cache_names, updated_cache

    decoder = tiny.adapter.decoder
    layers = decoder.num_layers
    export_form = decoder.segment(0, layers, True).eval()
    fused = decoder.segment(0, layers, True, fused_op=True).eval()
    spec = GraphSpec("segment", GraphKind.SEGMENT, (), ())  # no "kv" input: per-layer caches
    presents = [name for layer in range(layers) for name in layer_cache_names(layer)[2:]]

    def fused_call(hidden, position_ids, past_length, kv):
        out, *written = fused(hidden, position_ids, past_length, *cache_inputs(spec, kv).values())
        return out, updated_cache(kv, dict(zip(presents, written)))

    hidden = torch.randn(1, 9, decoder.hidden_size, generator=torch.Generator().manual_seed(0))
    kv_shape = (layers, 2, decoder.num_kv_heads, 16, decoder.head_dim)
    expected, kv_expected = run_steps(export_form, torch.zeros(kv_shape), hidden, steps=4)
    buffer = torch.full(kv_shape, SENTINEL)
    got, kv_got = run_steps(fused_call, buffer, hidden, steps=4)
    assert kv_got is buffer
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kv_got[:, :, :, :13], kv_expected[:, :, :, :13], atol=1e-5, rtol=1e-5)
