"""Properties every configuration of ``course_lib.model.DecoderLM`` must have, shared by the
model, positions and norms tests (each runs them over its own variants)."""

from __future__ import annotations

import torch


def assert_no_leak(m, vocab: int, *, atol: float = 2e-5, seed: int = 3) -> None:
    """Changing tokens 7… changes the logits there and leaves positions 0…6 unchanged."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (2, 12), generator=g)
    changed = ids.clone()
    changed[:, 7:] = torch.randint(vocab, (2, 5), generator=g)
    a, b = m(ids), m(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=atol, rtol=1e-4)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)     # the future did change


def assert_left_padding_matches_alone(m, vocab: int, *, atol: float = 2e-5, seed: int = 5) -> None:
    """A left-padded batch of prompts of lengths 9, 3, 6, 1 gives each prompt's logits alone."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, vocab, (n,), generator=g) for n in (9, 3, 6, 1)]
    P = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):], mask[b, P - len(p):] = p, 1
    batched = m(ids, attention_mask=mask)
    assert torch.isfinite(batched).all()
    for b, p in enumerate(prompts):
        torch.testing.assert_close(batched[b, P - len(p):], m(p[None])[0], atol=atol, rtol=1e-4)
