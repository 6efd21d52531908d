"""Chapter 6 — positions: how a Transformer learns where its tokens are.

Attention by itself is permutation-equivariant: shuffle the tokens and the outputs are shuffled
the same way. Position information has to be put in, and there are two places to put it:

* **absolute** — add a vector that depends on the position ``t`` to the token embedding:
  the fixed sinusoids of Vaswani et al. (``sinusoidal_position_encoding``,
  ``SinusoidalPositionalEmbedding``) or a learned table (``LearnedPositionalEmbedding``);
* **relative** — make the attention scores themselves depend on the offset ``j − i``:
  Shaw et al.'s clipped relative-position embeddings ``R^K, R^V`` (``relative_positions``,
  ``RelativePositionEmbedding``, ``relative_attention``), rotary embeddings (RoPE: ``rotate_half``,
  ``apply_rotary_pos_emb``, ``RotaryEmbedding``), and ALiBi's linear biases (``alibi_slopes``,
  ``alibi_bias``).

And two ways to stretch a RoPE model past its training length: position interpolation
(positions divided by ``s = L'/L``, ``interpolate_positions``) and NTK-aware base scaling
(``ntk_scaled_base``: base · s^(d/(d−2))).

RoPE comes in two memory layouts that give the same attention scores:

* ``"interleaved"`` — the paper's layout (RoFormer, GPT-J, Meta's original LLaMA code): the
  rotated pairs are neighbours ``(x_0, x_1), (x_2, x_3), …``; the rotation partner of a vector is
  ``rotate_every_two(x) = (−x_1, x_0, −x_3, x_2, …)``;
* ``"half"`` — the Hugging Face / GPT-NeoX layout: the pairs are ``(x_i, x_{i+d/2})``; the partner is
  ``rotate_half(x) = (−x_{d/2:}, x_{:d/2})``.

They differ by the fixed permutation ``interleaved_to_half_permutation(d)`` of the head
dimension (``tests/test_positional.py`` checks it; it is how checkpoints are converted between
the two codebases: permute the rows of W_q and W_k).

Shapes: attention internals are ``[batch, heads, seq, head_dim]``; positions are integer
``[seq]`` or ``[batch, seq]`` tensors (``position_ids``). Everything here is tested in
``tests/test_positional.py`` against PyTorch (``F.scaled_dot_product_attention``, complex
multiplication ``torch.polar``) and the ALiBi reference code, and by properties (the RoPE score
depends only on m − n, PE(t + k) is a rotation of PE(t), …).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from course_lib.attention import scaled_dot_product_attention
from course_lib.utils import check_floating, check_tensor

__all__ = [
    # absolute
    "sinusoidal_frequencies",
    "sinusoidal_position_encoding",
    "sinusoidal_shift_matrix",
    "SinusoidalPositionalEmbedding",
    "LearnedPositionalEmbedding",
    # relative (Shaw et al.)
    "relative_positions",
    "relative_position_matrix",
    "RelativePositionEmbedding",
    "relative_attention",
    # RoPE
    "ROPE_LAYOUTS",
    "rope_frequencies",
    "rope_angles",
    "rope_cos_sin",
    "rotate_half",
    "rotate_every_two",
    "apply_rotary_pos_emb",
    "apply_rope",
    "rope_rotation_matrix",
    "interleaved_to_half_permutation",
    "rope_long_range_bound",
    "RotaryEmbedding",
    # ALiBi
    "alibi_slopes",
    "alibi_bias",
    # longer contexts
    "interpolation_scale",
    "interpolate_positions",
    "ntk_scaled_base",
]

ROPE_LAYOUTS = ("half", "interleaved")


def _check_even(name: str, d: int) -> None:
    if not isinstance(d, int) or d <= 0 or d % 2:
        raise ValueError(f"{name}: expected a positive even integer (pairs of coordinates); got {d!r}")


def _check_base(base) -> None:
    if not isinstance(base, (int, float)) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base: expected a finite number > 1; got {base!r}")


def _as_positions(name: str, positions, device=None) -> torch.Tensor:
    """An int ``n`` → ``arange(n)``; a tensor is returned as is (integer or float positions)."""
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"{name}: expected a non-negative length; got {positions}")
        return torch.arange(positions, device=device)
    check_tensor(name, positions)
    if positions.dtype == torch.bool or positions.is_complex():
        raise ValueError(f"{name}: expected integer or floating positions; got {positions.dtype}")
    return positions


# ============================================================================ absolute positions
def sinusoidal_frequencies(d_model: int, base: float = 10000.0, *, device=None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[d_model/2]`` angular frequencies ω_i = base^(−2i/d_model), i = 0 … d_model/2 − 1.

    Coordinate pair i of the encoding oscillates with wavelength 2π·base^(2i/d): from 2π
    (i = 0) to almost 2π·base (the last pair), a geometric progression.
    """
    _check_even("d_model", d_model)
    _check_base(base)
    i = torch.arange(0, d_model, 2, dtype=torch.float64, device=device)
    return (base ** (-i / d_model)).to(dtype)


def sinusoidal_position_encoding(positions, d_model: int, base: float = 10000.0, *, device=None,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed encoding of "Attention is all you need" (Vaswani et al., 2017, §3.5).

        PE[t, 2i]   = sin(t · ω_i),   PE[t, 2i+1] = cos(t · ω_i),   ω_i = base^(−2i/d_model)

    Args:
        positions: an int ``n`` (positions 0 … n−1) or a tensor of positions ``[...]``
            (integer or float: fractional positions are what position interpolation feeds it).
        d_model: the (even) width of the encoding.
    Returns:
        ``[n, d_model]`` or ``[..., d_model]`` in ``dtype``.
    """
    pos = _as_positions("positions", positions, device)
    omega = sinusoidal_frequencies(d_model, base, device=pos.device, dtype=torch.float64)
    angles = pos.to(torch.float64)[..., None] * omega  # [..., d/2]
    pe = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [..., d/2, 2]: (sin, cos) pairs
    return pe.flatten(-2).to(dtype)


def sinusoidal_shift_matrix(k: float, d_model: int, base: float = 10000.0, *, dtype=torch.float32) -> torch.Tensor:
    """The ``[d_model, d_model]`` matrix R_k with PE(t + k) = R_k · PE(t) for every t.

    Each (sin, cos) pair is rotated by the angle k·ω_i:
    sin(a + b) = cos b · sin a + sin b · cos a,  cos(a + b) = −sin b · sin a + cos b · cos a,
    so R_k is block-diagonal with blocks ((cos kω_i, sin kω_i), (−sin kω_i, cos kω_i)): it does not
    depend on t. This is why Vaswani et al. expected the model "to easily learn to attend by
    relative positions".
    """
    omega = sinusoidal_frequencies(d_model, base, dtype=torch.float64)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    R = torch.zeros(d_model, d_model, dtype=torch.float64)
    idx = torch.arange(0, d_model, 2)
    R[idx, idx], R[idx, idx + 1] = c, s
    R[idx + 1, idx], R[idx + 1, idx + 1] = -s, c
    return R.to(dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """``forward(position_ids [..., T]) → [..., T, d_model]``: the sinusoidal table, no parameters.

    Computed on the fly from the positions, so it has no maximum length: any position, even a
    fractional one, has an encoding (whether the model can *use* an unseen one is the
    extrapolation question of Chapter 6). ``scaling`` divides the positions (interpolation);
    ``scale`` multiplies the table. The table's entries have RMS 1/√2; Vaswani et al. multiply the
    token embeddings by √d_model to match, while a GPT-2-style model initialises its token
    embeddings with std 0.02, so ``course_lib.model`` uses ``scale = 0.02·√2`` — the RMS of a
    freshly initialised learned table — instead of letting the positions drown the tokens.
    """

    def __init__(self, d_model: int, base: float = 10000.0, scaling: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.d_model, self.base, self.scaling, self.scale = d_model, base, float(scaling), float(scale)
        self.register_buffer("inv_freq", sinusoidal_frequencies(d_model, base), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        check_tensor("position_ids", position_ids, min_dim=1)
        angles = (position_ids.float() / self.scaling)[..., None] * self.inv_freq  # [..., T, d/2]
        return self.scale * torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, base={self.base:g}, scaling={self.scaling:g}, scale={self.scale:g}"


class LearnedPositionalEmbedding(nn.Embedding):
    """A learned table ``[max_positions, d_model]`` (GPT-2, BERT): row t is the vector of position t.

    An ``nn.Embedding`` that refuses positions past its table with a ``ValueError`` naming the
    limit (plain ``nn.Embedding`` raises an ``IndexError`` deep inside). Rows the training never
    reached keep their random initialisation: a model trained on length L has learned nothing
    about positions ≥ L, which is why learned positions cannot extrapolate.
    """

    def __init__(self, max_positions: int, d_model: int):
        super().__init__(max_positions, d_model)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        check_tensor("position_ids", position_ids, min_dim=1)
        if position_ids.numel() and (int(position_ids.max()) >= self.num_embeddings or int(position_ids.min()) < 0):
            raise ValueError(
                f"position_ids: expected positions in [0, {self.num_embeddings}) (max_seq_len); "
                f"got positions up to {int(position_ids.max())}"
            )
        return super().forward(position_ids)


# ============================================================================ relative positions
def relative_positions(q_positions: torch.Tensor, k_positions: torch.Tensor, max_distance: int | None = None) -> torch.Tensor:
    """``P[..., i, j] = clip(k_j − q_i, −max_distance, max_distance)`` (Shaw et al., 2018).

    Args:
        q_positions: ``[..., T]`` integer positions of the queries.
        k_positions: ``[..., S]`` integer positions of the keys.
        max_distance: the clipping distance k (None: no clipping).
    Returns:
        ``[..., T, S]`` int64. Positive entries: the key is to the right (in the future).
    """
    check_tensor("q_positions", q_positions, min_dim=1)
    check_tensor("k_positions", k_positions, min_dim=1)
    if max_distance is not None and (not isinstance(max_distance, int) or max_distance < 0):
        raise ValueError(f"max_distance: expected a non-negative integer; got {max_distance!r}")
    P = k_positions.long()[..., None, :] - q_positions.long()[..., :, None]
    return P if max_distance is None else P.clamp(-max_distance, max_distance)


def relative_position_matrix(n: int, max_distance: int | None = None, *, device=None) -> torch.Tensor:
    """The ``[n, n]`` matrix of clipped offsets ``clip(j − i, −k, k)`` (Shaw et al.).

    ``relative_position_matrix(5, 2)`` is::

        [[ 0,  1,  2,  2,  2],
         [-1,  0,  1,  2,  2],
         [-2, -1,  0,  1,  2],
         [-2, -2, -1,  0,  1],
         [-2, -2, -2, -1,  0]]
    """
    pos = torch.arange(n, device=device)
    return relative_positions(pos, pos, max_distance)


class RelativePositionEmbedding(nn.Module):
    """Shaw et al.'s learned relative embeddings: ``2k + 1`` vectors for the keys and the values.

    ``w_K, w_V ∈ R^{(2k+1) × head_dim}``; the pair (i, j) uses row ``clip(j − i, −k, k) + k``:
    ``a^K_ij = w_K[clip(j − i) + k]``, ``a^V_ij = w_V[clip(j − i) + k]`` (shared by the heads, as in
    the paper). ``forward(q_positions, k_positions)`` returns ``(R^K, R^V)`` materialised as
    ``[..., T, S, head_dim]`` (the n × n × d tensors of Shaw et al.); ``index`` returns just the rows
    used, ``[..., T, S]``, which is what ``relative_attention`` needs (it never materialises R^K).
    """

    def __init__(self, head_dim: int, max_distance: int):
        super().__init__()
        if not isinstance(max_distance, int) or max_distance < 0:
            raise ValueError(f"max_distance: expected a non-negative integer; got {max_distance!r}")
        self.head_dim, self.max_distance = head_dim, max_distance
        self.rel_k = nn.Embedding(2 * max_distance + 1, head_dim)
        self.rel_v = nn.Embedding(2 * max_distance + 1, head_dim)
        nn.init.normal_(self.rel_k.weight, std=0.02)
        nn.init.normal_(self.rel_v.weight, std=0.02)

    def index(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        return relative_positions(q_positions, k_positions, self.max_distance) + self.max_distance

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.index(q_positions, k_positions)
        return self.rel_k(idx), self.rel_v(idx)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_distance={self.max_distance}"


def relative_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_k: torch.Tensor,
    rel_v: torch.Tensor | None,
    index: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    return_weights: bool = False,
):
    """Self-attention with Shaw et al.'s relative positions (their eqs. 3–4):

        e_ij = q_i · (k_j + a^K_ij) / √d,   α = softmax_j(e + mask),   z_i = Σ_j α_ij (v_j + a^V_ij)

    Computed without materialising the ``[T, S, d]`` tensors: ``q · a^K_ij`` is ``q @ w_Kᵀ``
    (``[..., T, 2k+1]``) gathered at ``index``, and ``Σ_j α_ij a^V_ij`` sums the weights of each
    relative distance (a scatter-add into ``2k + 1`` buckets) and multiplies by ``w_V``.

    Args:
        q, k, v: ``[..., T, d]``, ``[..., S, d]``, ``[..., S, d]`` (e.g. ``[B, H, T, d]``).
        rel_k, rel_v: the tables ``[2k+1, d]`` (``rel_v`` may be None: keys only).
        index: ``[T, S]`` or broadcastable to ``[..., T, S]``: the row of the tables for each pair,
            ``clip(j − i, −k, k) + k`` (``RelativePositionEmbedding.index``).
        mask: boolean (True = attend) or additive, broadcastable to ``[..., T, S]``.
    Returns:
        ``[..., T, d]`` (and the weights ``[..., T, S]`` with ``return_weights``).
    """
    for name, t in (("rel_k", rel_k),) + ((("rel_v", rel_v),) if rel_v is not None else ()):
        check_tensor(name, t, ndim=2)
        if t.shape[-1] != q.shape[-1]:
            raise ValueError(f"{name}: expected [2k+1, {q.shape[-1]}] (head_dim of q); got {tuple(t.shape)}")
    check_tensor("index", index, min_dim=2)
    T, S = q.shape[-2], k.shape[-2]
    if tuple(index.shape[-2:]) != (T, S):
        raise ValueError(f"index: expected [..., {T}, {S}] (queries × keys); got {tuple(index.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    score_shape = torch.broadcast_shapes(q.shape[:-2], index.shape[:-2]) + (T, S)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_rel = q.to(cdt) @ rel_k.to(cdt).T  # [..., T, 2k+1]
    bias = torch.gather(q_rel.expand(*score_shape[:-1], q_rel.shape[-1]), -1, index.expand(score_shape)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            bias = bias.masked_fill(~mask, float("-inf"))
        else:
            bias = bias + mask.to(cdt)
    out, weights = scaled_dot_product_attention(q, k, v, bias, scale=scale, return_weights=True)
    if rel_v is not None:
        buckets = weights.new_zeros(*score_shape[:-1], rel_v.shape[0], dtype=cdt)
        buckets.scatter_add_(-1, index.expand(score_shape), weights.to(cdt))  # Σ_j α_ij per distance
        out = out + (buckets @ rel_v.to(cdt)).to(out.dtype)
    return (out, weights) if return_weights else out


# ============================================================================ RoPE
def rope_frequencies(head_dim: int, base: float = 10000.0, *, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[head_dim/2]`` rotation frequencies θ_i = base^(−2i/d), i = 0 … d/2 − 1 (RoFormer eq. 15,
    written there with i = 1 … d/2 and exponent −2(i−1)/d): the sinusoidal frequencies again.

    This is HF's ``inv_freq``. ``base`` is 10 000 in RoFormer and LLaMA-1/2, 500 000 in LLaMA-3.
    """
    _check_even("head_dim", head_dim)
    _check_base(base)
    return sinusoidal_frequencies(head_dim, base, device=device, dtype=dtype)


def rope_angles(position_ids: torch.Tensor, head_dim: int, base: float = 10000.0, scaling: float = 1.0) -> torch.Tensor:
    """``[..., T, head_dim/2]`` angles ``(m / scaling) · θ_i`` for the positions m."""
    pos = _as_positions("position_ids", position_ids)
    if not isinstance(scaling, (int, float)) or not scaling > 0:
        raise ValueError(f"scaling: expected a positive number; got {scaling!r}")
    theta = rope_frequencies(head_dim, base, device=pos.device, dtype=torch.float64)
    return (pos.to(torch.float64) / scaling)[..., None] * theta


def _spread(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``[..., d/2]`` per-pair values → ``[..., d]`` laid out like the vector's pairs."""
    if layout == "half":
        return torch.cat((x, x), dim=-1)  # (θ_0 … θ_{d/2−1}, θ_0 … θ_{d/2−1})
    if layout == "interleaved":
        return x.repeat_interleave(2, dim=-1)  # (θ_0, θ_0, θ_1, θ_1, …)
    raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}; got {layout!r}")


def rope_cos_sin(position_ids, head_dim: int, base: float = 10000.0, scaling: float = 1.0, *,
                 layout: str = "half", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[..., T, head_dim]`` for the elementwise RoPE in ``layout``.

    Args:
        position_ids: an int ``n`` (positions 0 … n−1) or a tensor ``[T]`` / ``[B, T]``.
        scaling: position interpolation factor s: the angles use m / s.
    """
    ang = _spread(rope_angles(position_ids, head_dim, base, scaling), layout)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x_1, x_2) → (−x_2, x_1)`` for the two halves of the last dimension (HF, GPT-NeoX layout)."""
    check_tensor("x", x, min_dim=1)
    _check_even("x.shape[-1]", x.shape[-1])
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``(x_0, x_1, x_2, x_3, …) → (−x_1, x_0, −x_3, x_2, …)`` (the paper's and GPT-J's layout)."""
    check_tensor("x", x, min_dim=1)
    _check_even("x.shape[-1]", x.shape[-1])
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """``x · cos + rotate(x) · sin``: the O(d) form of ``R^d_{Θ,m} x`` (cos, sin broadcast to x)."""
    rot = rotate_half(x) if layout == "half" else rotate_every_two(x) if layout == "interleaved" else None
    if rot is None:
        raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}; got {layout!r}")
    return (x * cos + rot * sin).to(x.dtype)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         position_ids: torch.Tensor | None = None, unsqueeze_dim: int = 1, *,
                         layout: str = "half") -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys by their positions (the HF signature).

    Args:
        q: ``[B, H, T, d]``;  k: ``[B, H_kv, T, d]`` (the head counts may differ: GQA).
        cos, sin: either tables ``[L, d]`` indexed here by ``position_ids`` (``[T]`` or
            ``[B, T]``, the older HF convention), or already gathered: ``[T, d]`` or ``[B, T, d]``.
        unsqueeze_dim: where the heads dimension goes in cos/sin: 1 for ``[B, H, T, d]``
            (2 for ``[B, T, H, d]``).
        layout: ``"half"`` (rotate_half) or ``"interleaved"`` (rotate_every_two); cos and sin
            must have been built in the same layout (``rope_cos_sin(..., layout=…)``).
    Returns:
        ``(q_rot, k_rot)`` with the shapes and dtypes of q and k.
    """
    check_tensor("q", q, min_dim=2)
    check_tensor("k", k, min_dim=2)
    check_floating("q", q)
    if cos.shape != sin.shape:
        raise ValueError(f"sin: expected the shape of cos, {tuple(cos.shape)}; got {tuple(sin.shape)}")
    if cos.shape[-1] != q.shape[-1] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"cos: expected last dimension head_dim = {q.shape[-1]} (of q); got cos {tuple(cos.shape)}, k {tuple(k.shape)}"
        )
    if position_ids is not None:
        check_tensor("position_ids", position_ids, min_dim=1)
        if cos.dim() != 2:
            raise ValueError(f"cos: with position_ids, expected a table [max_len, head_dim]; got {tuple(cos.shape)}")
        if position_ids.numel() and int(position_ids.max()) >= cos.shape[0]:
            raise ValueError(f"position_ids: expected positions < {cos.shape[0]} (rows of cos); got {int(position_ids.max())}")
        cos, sin = cos[position_ids], sin[position_ids]
    if cos.dim() >= 3:  # [B, T, d] → [B, 1, T, d]
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout)


def rope_rotation_matrix(m: float, head_dim: int, base: float = 10000.0, *, layout: str = "interleaved",
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ``[d, d]`` block-diagonal rotation ``R^d_{Θ,m}`` of RoFormer (O(d²) to apply).

    In the interleaved layout it is block-diagonal with 2 × 2 blocks
    ((cos mθ_i, −sin mθ_i), (sin mθ_i, cos mθ_i)); in the half layout the same rotations act on
    the pairs (i, i + d/2). ``apply_rope`` computes ``R x`` in O(d).
    """
    ang = rope_angles(torch.tensor([m], dtype=torch.float64), head_dim, base)[0]
    c, s = ang.cos(), ang.sin()
    i = torch.arange(head_dim // 2)
    a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + head_dim // 2) if layout == "half" else (None, None)
    if a is None:
        raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}; got {layout!r}")
    R = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    R[a, a], R[a, b], R[b, a], R[b, b] = c, -s, s, c
    return R.to(dtype)


def interleaved_to_half_permutation(head_dim: int) -> torch.Tensor:
    """The permutation ``p`` with ``x_half = x_interleaved[..., p]``: ``(0, 2, 4, …, 1, 3, 5, …)``.

    Pair i = (2i, 2i+1) of the interleaved layout goes to (i, i + d/2) of the half layout, so
    ``apply_rope(x, layout="interleaved")[..., p] == apply_rope(x[..., p], layout="half")``, and
    scores ``q·k`` are unchanged because both q and k are permuted the same way.
    """
    _check_even("head_dim", head_dim)
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def rope_long_range_bound(distances, head_dim: int = 128, base: float = 10000.0) -> torch.Tensor:
    """RoFormer §3.4.3: the relative upper bound ``(1/(d/2)) Σ_{j=1}^{d/2} |S_j|`` of the score.

    Writing the rotated score as Σ_i h_i e^{i(m−n)θ_i} and summing by parts,
    ``|q·k| ≤ (max_i |h_{i+1} − h_i|) Σ_{j=1}^{d/2} |S_j|`` with ``S_j = Σ_{i<j} e^{i(m−n)θ_i}``.
    The factor ``(1/(d/2)) Σ_j |S_j|`` decays (not monotonically) as |m − n| grows:
    RoPE's "long-term decay".

    Args:
        distances: ``[N]`` relative distances m − n.
    Returns:
        ``[N]`` float64.
    """
    dist = _as_positions("distances", distances).to(torch.float64)
    theta = rope_frequencies(head_dim, base, dtype=torch.float64)
    S = torch.polar(torch.ones(dist.numel(), head_dim // 2, dtype=torch.float64),
                    dist.reshape(-1, 1) * theta).cumsum(-1)  # S_1 … S_{d/2}
    return S.abs().mean(-1).reshape(dist.shape)


class RotaryEmbedding(nn.Module):
    """``forward(x, position_ids) → (cos, sin)``, each ``[B, T, head_dim]`` (HF's LlamaRotaryEmbedding).

    No parameters: the frequencies θ_i are a buffer and cos/sin are computed for the positions
    asked, so the model takes any length. ``scaling`` > 1 is position interpolation (positions
    divided by s); ``scaling_type="ntk"`` instead keeps positions and raises the base to
    ``base · s^(d/(d−2))`` (NTK-aware scaling).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: float = 1.0, *,
                 scaling_type: str = "linear", layout: str = "half"):
        super().__init__()
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}; got {layout!r}")
        if scaling_type not in ("linear", "ntk"):
            raise ValueError(f"scaling_type: expected 'linear' or 'ntk'; got {scaling_type!r}")
        if not isinstance(scaling, (int, float)) or not scaling > 0:
            raise ValueError(f"scaling: expected a positive number (1 = no scaling); got {scaling!r}")
        self.head_dim, self.layout, self.scaling_type = head_dim, layout, scaling_type
        self.base = ntk_scaled_base(base, scaling, head_dim) if scaling_type == "ntk" else float(base)
        self.scaling = float(scaling) if scaling_type == "linear" else 1.0
        self.register_buffer("inv_freq", rope_frequencies(head_dim, self.base), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ang = (position_ids.float() / self.scaling)[..., None] * self.inv_freq.float()
        ang = _spread(ang, self.layout)
        return ang.cos().to(x.dtype), ang.sin().to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}, scaling={self.scaling:g}, layout={self.layout!r}"


# ============================================================================ ALiBi
def alibi_slopes(n_heads: int) -> torch.Tensor:
    """``[n_heads]`` ALiBi slopes m_h (Press et al., 2022).

    For n a power of two: the geometric sequence that starts at 2^(−8/n) with ratio 2^(−8/n),
    m_h = 2^(−8h/n), h = 1 … n (8 heads: 1/2, 1/4, …, 1/256; 16 heads: 2^(−1/2), 2^(−1), …, 2^(−8),
    m_h = 2^(−h/2)). Otherwise, as in the paper's reference code: the slopes of the
    closest smaller power of two 2^a, then every other slope of 2^(a+1) heads (the ones that
    interleave between them), as many as are missing.
    """
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise ValueError(f"n_heads: expected a positive integer; got {n_heads!r}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    closest = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two(closest)
    if closest != n_heads:
        slopes += power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_positions, k_positions=None) -> torch.Tensor:
    """ALiBi's additive bias ``−m_h · |i − j|``: ``[H, T, S]`` (or ``[B, H, T, S]`` for batched positions).

    For the causal decoder only keys j ≤ i are visible, where this is m_h · (j − i) ≤ 0: a penalty
    growing linearly with the distance, steeper for heads with larger slopes. Future keys (masked
    anyway) get the symmetric value, so the bias is never positive.

    It is added to the scaled scores, ``softmax(q kᵀ/√d + bias)`` (Press et al., eq. in §3); the
    softmax ignores a per-row constant, so ``m_h · j`` (what BLOOM adds) gives the same weights.

    Args:
        slopes: ``[H]`` (``alibi_slopes(H)``).
        q_positions: an int T (positions 0 … T−1) or ``[T]`` / ``[B, T]`` integer positions.
        k_positions: default: the same as the queries.
    """
    check_tensor("slopes", slopes, ndim=1)
    check_floating("slopes", slopes)
    qp = _as_positions("q_positions", q_positions, slopes.device)
    kp = qp if k_positions is None else _as_positions("k_positions", k_positions, slopes.device)
    dist = (qp[..., :, None] - kp[..., None, :]).abs().to(slopes.dtype)  # [..., T, S]
    return -slopes.view(-1, 1, 1) * dist.unsqueeze(-3)  # [..., H, T, S]


# ============================================================================ longer contexts
def interpolation_scale(train_len: int, target_len: int) -> float:
    """Position interpolation factor ``s = L' / L`` (Chen et al., 2023): extend L to L'.

    Positions are divided by s, ``m → m · L / L'``, so the L' positions of the longer context are
    squeezed into the range [0, L) the model was trained on. s < 1 is not an extension: 1.0.
    """
    for name, v in (("train_len", train_len), ("target_len", target_len)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive integer; got {v!r}")
    return max(1.0, target_len / train_len)


def interpolate_positions(position_ids: torch.Tensor, train_len: int, target_len: int) -> torch.Tensor:
    """Float positions ``m · L / L'``: every position of the longer window lands inside [0, L)."""
    check_tensor("position_ids", position_ids)
    return position_ids.to(torch.float32) / interpolation_scale(train_len, target_len)


def ntk_scaled_base(base: float, scale: float, head_dim: int) -> float:
    """NTK-aware RoPE scaling (bloc97, 2023): ``base' = base · s^(d/(d−2))``.

    The fastest pair (θ_0 = 1) is left alone, so local order stays sharp, and the slowest pair
    (θ_{d/2−1} = base^(−(d−2)/d)) is slowed by exactly s, as position interpolation would do:
    (base · s^(d/(d−2)))^(−(d−2)/d) = base^(−(d−2)/d) / s. The pairs in between interpolate
    progressively less.
    """
    _check_base(base)
    _check_even("head_dim", head_dim)
    if head_dim < 4:
        raise ValueError(f"head_dim: expected at least 4 for NTK scaling (d/(d−2)); got {head_dim}")
    if not isinstance(scale, (int, float)) or not scale >= 1:
        raise ValueError(f"scale: expected a number ≥ 1; got {scale!r}")
    return float(base) * float(scale) ** (head_dim / (head_dim - 2))
