"""Chapter 3 — masks: which keys a query may see, and which tokens a model must predict.

Two different things are called a "mask" in Transformers, and this module has both:

* **Attention masks** decide which keys each query may attend to. Boolean masks follow
  PyTorch's convention, ``True`` where a query may attend to a key. They have shape
  ``[T, S]`` (queries × keys) or anything that broadcasts to ``[batch, heads, T, S]``:
  the causal mask is ``[T, S]``, a padding (key) mask is ``[B, 1, 1, S]``, and their
  combination is ``[B, 1, T, S]``. An *additive* mask holds 0 where attention is allowed and
  a large negative number (``-inf`` or ``torch.finfo(dtype).min``) where it is blocked; it
  is added to the scores before the softmax.
* **Token masks** decide which input tokens are hidden from the model and become training
  targets: BERT's masked-language-model corruption (``mlm_mask``) and GPT's causal
  language-model targets (``causal_lm_labels``, ``shift_labels``, ``causal_lm_loss``).
  Targets that must not count use the label ``IGNORE_INDEX = -100``, the default
  ``ignore_index`` of ``torch.nn.functional.cross_entropy``.

Also here: ``BertEmbeddings`` (token + segment + learned position embeddings, then LayerNorm),
BERT's input layer.

Tested against ``F.scaled_dot_product_attention`` (``is_causal``, bool and float masks),
``F.cross_entropy`` and ``nn.LayerNorm`` in ``tests/test_masks.py``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.utils import check_tensor

__all__ = [
    "IGNORE_INDEX",
    "causal_mask",
    "padding_mask",
    "combine_masks",
    "document_mask",
    "document_position_ids",
    "to_additive",
    "to_boolean",
    "fully_masked_rows",
    "mlm_mask",
    "causal_lm_labels",
    "shift_labels",
    "causal_lm_loss",
    "BertEmbeddings",
]

IGNORE_INDEX = -100  # the default ignore_index of F.cross_entropy and of Hugging Face models


# ------------------------------------------------------------------------ attention masks
def causal_mask(T: int, S: int | None = None, *, device=None) -> torch.Tensor:
    """``[T, S]`` boolean mask, True where key j is not in the future of query i.

    The T queries are the **last** T positions of the S keys (bottom-right aligned), so
    ``mask[i, j] = j <= i + (S - T)``. That is what decoding with a KV cache needs (one new
    query sees every cached key). For ``T == S`` it is the usual lower-triangular mask and
    equals ``F.scaled_dot_product_attention(..., is_causal=True)``; for ``T != S`` torch's
    ``is_causal`` is top-left aligned instead.
    """
    S = T if S is None else S
    if T < 0 or S < T:
        raise ValueError(f"S: expected at least T = {T} keys (queries are the last T positions); got S = {S}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def _as_lengths(lengths) -> torch.Tensor:
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"lengths: expected a 1-D tensor or list of integers; got {type(lengths).__name__}") from None
    if lengths.dim() != 1:
        raise ValueError(f"lengths: expected a 1-D tensor [B] of sequence lengths; got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer dtype; got {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths: expected non-negative lengths; got {lengths.tolist()}")
    return lengths


def padding_mask(lengths, S: int | None = None, *, side: str = "right", device=None) -> torch.Tensor:
    """``[B, 1, 1, S]`` boolean key mask from sequence lengths: True at the real tokens.

    Sequence b has ``lengths[b]`` real tokens; the rest of its S positions are padding. A
    *key* mask hides the padded **keys** from every query; it has singleton head and query
    dimensions so that it broadcasts against ``[B, H, T, S]`` scores (and against a
    ``[T, S]`` causal mask, see ``combine_masks``). Padded *queries* are left alone: their
    outputs are garbage that the loss ignores.

    Args:
        lengths: ``[B]`` integers (tensor or list), each in ``[0, S]``.
        S: the padded length; default ``max(lengths)``.
        side: ``"right"`` (tokens first, padding after: training, BERT) or ``"left"``
            (padding first: batched generation, so that every sequence ends at position S-1).
        device: default: the device of ``lengths``.
    Returns:
        ``[B, 1, 1, S]`` bool.
    """
    lengths = _as_lengths(lengths)
    if side not in ("right", "left"):
        raise ValueError(f"side: expected 'right' or 'left'; got {side!r}")
    device = lengths.device if device is None else device
    max_len = int(lengths.max()) if lengths.numel() else 0
    S = max_len if S is None else S
    if S < max_len:
        raise ValueError(f"S: expected at least max(lengths) = {max_len}; got S = {S}")
    pos = torch.arange(S, device=device)
    lengths = lengths.to(device)[:, None]
    keep = pos < lengths if side == "right" else pos >= S - lengths
    return keep[:, None, None, :]


def combine_masks(*masks: torch.Tensor | None) -> torch.Tensor:
    """The logical AND of boolean masks, broadcast to a common shape.

    A key is visible to a query only if **every** mask allows it. ``None`` entries are
    skipped. Example: ``combine_masks(padding_mask(lengths), causal_mask(T))`` turns
    ``[B, 1, 1, S]`` and ``[T, S]`` into ``[B, 1, T, S]``.

    Returns a new tensor (never a view of an input).
    """
    masks = [m for m in masks if m is not None]
    if not masks:
        raise ValueError("masks: expected at least one mask; got none")
    for i, m in enumerate(masks):
        check_tensor(f"masks[{i}]", m)
        if m.dtype != torch.bool:
            raise ValueError(
                f"masks[{i}]: expected dtype torch.bool (True = attend); got {m.dtype} "
                "(convert additive masks with to_boolean first)"
            )
    try:
        shape = torch.broadcast_shapes(*(m.shape for m in masks))
    except RuntimeError:
        raise ValueError(
            "masks: expected shapes that broadcast together; got " + ", ".join(str(tuple(m.shape)) for m in masks)
        ) from None
    out = masks[0].expand(shape).clone()
    for m in masks[1:]:
        out &= m
    return out


def _as_doc_lengths(doc_lengths) -> torch.Tensor:
    doc_lengths = _as_lengths(doc_lengths)
    if doc_lengths.numel() == 0 or int(doc_lengths.min()) < 1:
        raise ValueError(f"doc_lengths: expected at least one document, each of length ≥ 1; got {doc_lengths.tolist()}")
    return doc_lengths


def document_mask(doc_lengths, *, causal: bool = True, device=None) -> torch.Tensor:
    """``[T, T]`` boolean mask for documents packed back to back into one row of ``T = sum(doc_lengths)``.

    Query i may attend to key j only if both lie in the same document (block-diagonal) and, with
    ``causal``, j ≤ i. Pre-training packs short documents into one long row this way so that no
    padding is wasted and no document sees another (FlashAttention's "varlen" kernels take the same
    information as cumulative lengths). Use it with :func:`document_position_ids`.

    Args:
        doc_lengths: ``[n_docs]`` positive integers (tensor or list), in packing order.
        causal: also apply the causal mask inside each document.
    Returns:
        ``[T, T]`` bool; combine with a key padding mask through :func:`combine_masks`.
    """
    doc_lengths = _as_doc_lengths(doc_lengths)
    device = doc_lengths.device if device is None else device
    doc = torch.repeat_interleave(torch.arange(len(doc_lengths), device=device), doc_lengths.to(device))  # [T]
    mask = doc[:, None] == doc[None, :]
    return mask & causal_mask(len(doc), device=device) if causal else mask


def document_position_ids(doc_lengths, *, device=None) -> torch.Tensor:
    """``[T]`` position of each packed token inside its own document: ``0, 1, …`` restarting at each one.

    With these positions a packed row gives every document the same position embeddings (or
    rotations) as when it is run on its own.
    """
    doc_lengths = _as_doc_lengths(doc_lengths)
    device = doc_lengths.device if device is None else device
    lengths = doc_lengths.to(device)
    starts = torch.cumsum(lengths, 0) - lengths                                            # [n_docs]
    T = int(lengths.sum())
    return torch.arange(T, device=device) - torch.repeat_interleave(starts, lengths)


def to_additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32, *, use_inf: bool = False) -> torch.Tensor:
    """Boolean mask (True = attend) → additive mask: 0 where allowed, a large negative where blocked.

    The blocked value is ``torch.finfo(dtype).min`` (−65504 in float16, about −3.4e38 in
    float32), the most negative finite number of ``dtype``, or ``-inf`` with ``use_inf=True``.
    Either is safe in ``dtype``, unlike a hard-coded constant such as ``-1e9``, which is
    ``-inf`` in float16 (it exceeds 65504).

    The two choices differ on a **fully masked** row: with ``-inf`` the softmax gives NaN
    (0/0), with ``finfo.min`` it gives a *uniform* distribution over the blocked keys. And
    adding two ``finfo.min`` masks overflows to ``-inf``: combine boolean masks first
    (``combine_masks``), convert once.
    """
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool (True = attend); got {mask.dtype}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch.dtype; got {dtype}")
    blocked = float("-inf") if use_inf else torch.finfo(dtype).min
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill_(~mask, blocked)


def to_boolean(mask: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Additive mask → boolean mask (True = attend): True where ``mask > threshold``.

    The default threshold is half of ``torch.finfo(mask.dtype).min``, which classifies
    both ``-inf`` and ``finfo.min`` as blocked and any moderate bias (ALiBi, relative
    positions) as allowed. Masks built with the old ``-1e4`` convention need an explicit
    threshold such as ``-1e3``.
    """
    check_tensor("mask", mask)
    if not mask.is_floating_point():
        raise ValueError(f"mask: expected a floating additive mask; got {mask.dtype}")
    if threshold is None:
        threshold = torch.finfo(mask.dtype).min / 2
    return mask > threshold


def fully_masked_rows(mask: torch.Tensor) -> torch.Tensor:
    """``[..., T]`` bool: True for the queries that may attend to **no** key.

    Softmax over such a row is 0/0. ``torch.softmax`` returns NaN there,
    ``F.scaled_dot_product_attention`` and ``course_lib.attention`` return zeros. They come
    from left padding combined with a causal mask, and from masking padded queries.
    """
    check_tensor("mask", mask, min_dim=1)
    if mask.dtype != torch.bool:
        mask = to_boolean(mask)
    return ~mask.any(dim=-1)


# ---------------------------------------------------------------------------- token masks
def _special_positions(input_ids: torch.Tensor, special_token_ids: Iterable[int]) -> torch.Tensor:
    ids = torch.as_tensor(list(special_token_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.isin(input_ids, ids) if ids.numel() else torch.zeros_like(input_ids, dtype=torch.bool)


def mlm_mask(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    special_token_ids: Sequence[int] = (),
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masked-language-model corruption (Devlin et al., 2019).

    Each eligible token is **selected** independently with probability ``mlm_probability``
    (15%). A selected token becomes a training target and its input is replaced by

    * ``[MASK]`` with probability 0.8,
    * a uniformly random token of the vocabulary with probability 0.1,
    * itself (unchanged) with probability 0.1.

    Tokens that are not selected are left as they are and get the label ``-100``
    (ignored by ``F.cross_entropy``). Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, …, given
    in ``special_token_ids``) and padding (``attention_mask == False``) are never selected.

    Args:
        input_ids: ``[B, L]`` integer token ids (any shape works).
        mask_token_id: the id of ``[MASK]``.
        vocab_size: random replacements are drawn from ``[0, vocab_size)``.
        special_token_ids: ids that are never selected (include the padding id).
        attention_mask: optional, shape of ``input_ids``; False (or 0) at padding.
        generator: a ``torch.Generator`` on the device of ``input_ids`` for reproducible draws.
    Returns:
        ``(masked_input_ids, labels)``, both of the shape and dtype of ``input_ids``;
        ``labels`` holds the original id where selected and ``-100`` elsewhere.
    """
    check_tensor("input_ids", input_ids)
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids: expected an integer dtype; got {input_ids.dtype}")
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability: expected a probability in [0, 1]; got {mlm_probability}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size: expected a positive vocabulary size; got {vocab_size}")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id: expected an id in [0, vocab_size = {vocab_size}); got {mask_token_id}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}; got {tuple(attention_mask.shape)}"
        )

    eligible = ~_special_positions(input_ids, special_token_ids)
    if attention_mask is not None:
        eligible &= attention_mask.bool()

    def coin(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < p

    selected = coin(mlm_probability) & eligible
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    to_mask = coin(0.8) & selected                       # 80% of the selected: [MASK]
    to_random = coin(0.5) & selected & ~to_mask          # half of the remaining 20%: random
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator,
                               device=input_ids.device, dtype=input_ids.dtype)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_ids, masked)   # the last 10%: unchanged
    return masked, labels


def causal_lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Labels for causal language modelling in the Hugging Face convention: the inputs themselves.

    ``labels[b, t] = input_ids[b, t]``, with ``-100`` where ``attention_mask`` is False
    (padding). The model (or ``causal_lm_loss``) shifts them: position t predicts token t+1.
    """
    check_tensor("input_ids", input_ids, min_dim=1)
    labels = input_ids.clone()
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}; got {tuple(attention_mask.shape)}"
            )
        labels = labels.masked_fill(~attention_mask.bool(), IGNORE_INDEX)
    return labels


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Targets aligned with the positions that predict them: ``out[..., t] = labels[..., t + 1]``.

    The last position has no next token and gets ``ignore_index``. With shifted labels the
    loss is a plain per-position cross-entropy: ``F.cross_entropy(logits.transpose(1, 2), shifted)``.
    """
    check_tensor("labels", labels, min_dim=1)
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """GPT's pre-training loss −L1: cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]``.

    Args:
        logits: ``[B, L, V]`` from the LM head.
        labels: ``[B, L]`` unshifted (``causal_lm_labels``); ``-100`` entries are ignored.
        reduction: ``"mean"`` over the counted targets, ``"sum"``, or ``"none"`` (``[B, L]``,
            zero at ignored positions and at the last position).
    """
    check_tensor("logits", logits, ndim=3)
    check_tensor("labels", labels, ndim=2)
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"labels: expected shape (B, L) = {tuple(logits.shape[:2])} to match logits {tuple(logits.shape)}; "
            f"got {tuple(labels.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none'; got {reduction!r}")
    return F.cross_entropy(logits.transpose(1, 2), shift_labels(labels), ignore_index=IGNORE_INDEX, reduction=reduction)


# ----------------------------------------------------------------------------- embeddings
class BertEmbeddings(nn.Module):
    """BERT's input layer: LayerNorm(token + segment + position embedding), then dropout.

    All three embeddings are learned tables of width ``d_model``: ``word_embeddings``
    ``[vocab_size, d_model]``, ``token_type_embeddings`` ``[type_vocab_size, d_model]``
    (segment A = 0, segment B = 1) and ``position_embeddings`` ``[max_position, d_model]``.
    The attribute names are those of Hugging Face's ``BertEmbeddings``.

    forward(input_ids ``[B, L]``, token_type_ids ``[B, L]`` = 0, position_ids ``[L]`` or
    ``[B, L]`` = 0..L-1) → ``[B, L, d_model]``.
    """

    def __init__(self, vocab_size: int, d_model: int, max_position: int = 512, type_vocab_size: int = 2,
                 *, layer_norm_eps: float = 1e-12, dropout: float = 0.0, padding_idx: int | None = None):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model)
        self.position_embeddings = nn.Embedding(max_position, d_model)
        self.LayerNorm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("input_ids", input_ids, ndim=2)
        B, L = input_ids.shape
        if L > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"input_ids: expected at most max_position = {self.position_embeddings.num_embeddings} tokens; got {L}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids: expected the shape of input_ids {tuple(input_ids.shape)}; got {tuple(token_type_ids.shape)}"
            )
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device)
        x = (self.word_embeddings(input_ids)
             + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(position_ids))
        return self.dropout(self.LayerNorm(x))
