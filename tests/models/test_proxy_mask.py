"""The select stage's proxy attention mask uses integer positions: in fp16 a float arange is inexact above 2048
positions (bf16: 256), and a LLaVA-NeXT prompt has ~2,990, so a float mask let a query see a later key."""

from __future__ import annotations

import torch

from trio_edge.trio.saliency import supervised_rows


def test_proxy_query_never_sees_a_later_position_beyond_2048_in_fp16(tiny):
    decoder = tiny.adapter.decoder.proxy_copy(0, torch.float16)
    seq = 2056  # supervised queries at S-5..S-2 = 2051..2054; 2051 is not representable in fp16 (-> 2052)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(seq, decoder.hidden_size, generator=generator).to(torch.float16)
    positions = torch.arange(seq)[None]
    rows = supervised_rows(seq, torch.float16, hidden.device)
    with torch.no_grad():
        before = decoder.proxy_logits(0, hidden, positions, rows)
        changed = hidden.clone()
        changed[2052] += 4.0  # a key the query at 2051 must not see
        after = decoder.proxy_logits(0, changed, positions, rows)
    assert torch.equal(before[0], after[0])  # query 2051: causal, untouched
    assert not torch.equal(before[1], after[1])  # query 2052 sees its own position


def test_few_rows_head_equals_lm_head_and_its_gradient():
    """The torch runtime's lm_head form: same logits and input gradient as the Linear it replaces."""
    from trio_edge.models.llama_decoder import FewRowsHead

    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(64, 1000, bias=False)
    x = torch.randn(4, 64, generator=generator, requires_grad=True)
    weights = torch.randn(4, 1000, generator=generator)
    ours = FewRowsHead.apply(x, head.weight)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), x)
    theirs = head(x)
    (theirs_grad,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert ours.shape == theirs.shape == (4, 1000)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours_grad, torch.zeros_like(ours_grad))
