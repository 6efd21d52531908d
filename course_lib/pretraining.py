"""Pre-training, fine-tuning and prompting: GPT and BERT at toy scale (Chapter 14).

**GPT** (Radford et al., 2018). A decoder (``course_lib.model.DecoderLM``) is pre-trained as a
language model on unlabelled text U, then fine-tuned on a labelled set C of ``(x¹ … xᵐ, y)``::

    L1(U) = Σᵢ log P(uᵢ | uᵢ₋ₖ … uᵢ₋₁; Θ)               generative pre-training
    L2(C) = Σ₍ₓ,ᵧ₎ log P(y | x¹ … xᵐ),  P(y | x) = softmax(h_l^m W_y)   supervised fine-tuning
    L3(C) = L2(C) + λ · L1(C)                            fine-tuning with the LM as auxiliary loss

``h_l^m`` is the last layer's state at the **extract** token, the last real token of the input,
which is written ``[start] x [extract]`` (or ``[start] premise [delim] hypothesis [extract]``):
:func:`gpt_input`, :class:`GPTClassifier`, :func:`extract_index`, :func:`gpt_objectives`.
The functions here *minimise* −L1, −L2 and −L3, each averaged over its terms.

**BERT** (Devlin et al., 2019). A bidirectional encoder (every token sees every real token) whose
input is token + segment + position embeddings (``course_lib.masks.BertEmbeddings``) of
``[CLS] A [SEP] B [SEP]``, pre-trained with two losses: masked language modelling (MLM: 15% of
the tokens selected, of those 80% → ``[MASK]``, 10% → a random token, 10% unchanged;
``course_lib.masks.mlm_mask``) and next-sentence prediction (NSP: B is the true next sentence half
of the time, a sentence of another document otherwise; a classifier on ``[CLS]``):
:class:`BertEncoder`, :class:`BertForPreTraining`, :func:`mlm_batch`, :func:`nsp_pairs`,
:func:`bert_input`, :func:`bert_pretraining_loss`.

**Prompting** (Radford et al., 2019; Brown et al., 2020). A task written as text: an
instruction, k solved examples, then the query (zero-, one-, few-shot): :func:`few_shot_prompt`.
In-context learning at toy scale: sequences ``x₁ f(x₁) x₂ f(x₂) …`` of a function f drawn afresh
for every sequence from :data:`ICL_FUNCTIONS` (:func:`icl_batch`, :func:`icl_prompt`); a model
trained on them predicts ``f(x_q)`` better the more examples precede the query, as an ideal learner
that knows the family does (:func:`ideal_icl_accuracy`).

**Data** (offline): documents are standard-library files (:func:`load_documents`). Two
classification tasks on lines of :data:`CLASSIFICATION_FILES` (modules *outside* the pre-training
corpus of ``course_lib.data``): is a line real code or are its words shuffled
(:func:`acceptability_lines`, like CoLA's grammatical acceptability), and which module does a line
come from (:func:`module_lines`).
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.data import STDLIB_FILES
from course_lib.masks import IGNORE_INDEX, BertEmbeddings, causal_lm_loss, mlm_mask
from course_lib.mha import EncoderLayer
from course_lib.model import DecoderLM
from course_lib.utils import check_int, check_number, check_probability, check_tensor

__all__ = [
    "CLASSIFICATION_FILES",
    "ICL_FUNCTIONS",
    "special_ids",
    "resize_token_embeddings",
    "gpt_input",
    "extract_index",
    "gather_extract",
    "GPTClassifier",
    "gpt_objectives",
    "BertEncoder",
    "BertForPreTraining",
    "mlm_batch",
    "nsp_pairs",
    "bert_input",
    "collate_pairs",
    "bert_pretraining_loss",
    "load_documents",
    "document_sentences",
    "module_lines",
    "acceptability_lines",
    "encode_batch",
    "few_shot_prompt",
    "icl_prompt",
    "icl_batch",
    "ideal_icl_accuracy",
]

# standard-library modules that are NOT in course_lib.data.STDLIB_FILES (the pre-training text)
CLASSIFICATION_FILES = ("turtle.py", "_pydecimal.py", "tarfile.py", "imaplib.py")

# ----------------------------------------------------------------------------- vocabulary
def special_ids(base_vocab_size: int, names) -> dict[str, int]:
    """Ids for special tokens appended after a vocabulary of ``base_vocab_size`` ids.

    ``special_ids(98, ["[CLS]", "[SEP]", "[MASK]"])`` → ``{"[CLS]": 98, "[SEP]": 99, "[MASK]": 100}``;
    the model's vocabulary is then ``base_vocab_size + len(names)``.
    """
    check_int("base_vocab_size", base_vocab_size)
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"names: expected distinct names; got {names}")
    return {name: base_vocab_size + i for i, name in enumerate(names)}


@torch.no_grad()
def resize_token_embeddings(model: DecoderLM, vocab_size: int, *, seed: int = 0) -> DecoderLM:
    """A copy of ``model`` with ``vocab_size`` token ids: the old rows kept, new rows ~ N(0, 0.02²).

    GPT's fine-tuning adds embeddings for its start, delimiter and extract tokens this way
    (the tied LM head grows with the embedding). ``vocab_size`` must not shrink the vocabulary.
    """
    if not isinstance(model, DecoderLM):
        raise ValueError(f"model: expected a DecoderLM; got {type(model).__name__}")
    old = model.config.vocab_size
    check_int("vocab_size", vocab_size, old)
    new = DecoderLM(model.config.replace(vocab_size=vocab_size)).to(next(model.parameters()).device)
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for name in ("tok_emb.weight", "lm_head.weight"):
        if name in state:
            rows = torch.randn(vocab_size - old, model.config.d_model, generator=g) * 0.02
            state[name] = torch.cat([state[name], rows.to(state[name])])
    new.load_state_dict(state)
    return new.train(model.training)


# ----------------------------------------------------------------------------- GPT
def gpt_input(*segments, start_id: int, extract_id: int, delim_id: int | None = None) -> list[int]:
    """GPT's input transformation: ``[start] s₁ [delim] s₂ … [extract]`` as one list of ids.

    One segment (classification): ``[start] x [extract]``; two (entailment, similarity):
    ``[start] premise [delim] hypothesis [extract]``. Each segment is a list of ids.
    """
    if not segments:
        raise ValueError("segments: expected at least one segment of ids; got none")
    if len(segments) > 1 and delim_id is None:
        raise ValueError(f"delim_id: expected an id to separate {len(segments)} segments; got None")
    out = [start_id]
    for i, seg in enumerate(segments):
        if i:
            out.append(delim_id)
        out.extend(int(t) for t in seg)
    out.append(extract_id)
    return out


def extract_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of the last real token of every row of ``attention_mask`` ``[B, T]`` (1 = real): ``[B]``.

    Left padding: always ``T − 1``; right padding: ``length − 1``. A row without a real token
    is an error (there is nothing to classify).
    """
    check_tensor("attention_mask", attention_mask, ndim=2)
    real = attention_mask.bool()
    if not bool(real.any(-1).all()):
        raise ValueError("attention_mask: expected at least one real token (1) in every row; got a row of padding")
    T = real.shape[1]
    return T - 1 - real.flip(-1).int().argmax(-1)


def gather_extract(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``hidden`` ``[B, T, D]`` → ``[B, D]``: the state at each row's extract (last real) token."""
    check_tensor("hidden", hidden, ndim=3)
    B, T, _ = hidden.shape
    if attention_mask is None:
        return hidden[:, -1]
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask: expected shape (B, T) = {(B, T)}; got {tuple(attention_mask.shape)}")
    return hidden[torch.arange(B, device=hidden.device), extract_index(attention_mask).to(hidden.device)]


class GPTClassifier(nn.Module):
    """A pre-trained ``DecoderLM`` plus GPT's linear head ``W_y`` on the extract token.

    ``forward(input_ids [B, T], attention_mask [B, T] | None)`` → ``(lm_logits [B, T, V],
    class_logits [B, n_classes])``: one pass gives both, so L1 and L2 (hence L3) come from the same
    forward. The final hidden states ``h_l`` (after the final norm) are read with a forward hook on
    ``transformer.norm_f``, so the decoder is used exactly as it is.
    """

    def __init__(self, transformer: DecoderLM, n_classes: int):
        super().__init__()
        if not isinstance(transformer, DecoderLM):
            raise ValueError(f"transformer: expected a DecoderLM; got {type(transformer).__name__}")
        check_int("n_classes", n_classes, 2)
        self.transformer = transformer
        self.classifier = nn.Linear(transformer.config.d_model, n_classes)   # W_y
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self._hidden = None
        transformer.norm_f.register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, inputs, output):
        self._hidden = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        lm_logits = self.transformer(input_ids, attention_mask=attention_mask)
        hidden, self._hidden = self._hidden, None                    # [B, T, D]
        return lm_logits, self.classifier(gather_extract(hidden, attention_mask))


def gpt_objectives(lm_logits: torch.Tensor, class_logits: torch.Tensor, input_ids: torch.Tensor,
                   labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   lam: float = 0.5) -> dict[str, torch.Tensor]:
    """GPT's three losses (to minimise, i.e. the negated log-likelihoods, averaged):

    ``L1``: next-token cross-entropy over the real tokens of the inputs (``masks.causal_lm_loss``);
    ``L2``: cross-entropy of ``class_logits`` ``[B, C]`` against ``labels`` ``[B]``;
    ``L3 = L2 + lam · L1`` (GPT: λ = 0.5).
    """
    check_tensor("class_logits", class_logits, ndim=2)
    check_tensor("labels", labels, ndim=1)
    if labels.shape[0] != class_logits.shape[0]:
        raise ValueError(f"labels: expected shape (B,) = ({class_logits.shape[0]},); got {tuple(labels.shape)}")
    check_number("lam", lam, at_least=0.0)
    lm_labels = input_ids if attention_mask is None else input_ids.masked_fill(~attention_mask.bool(), IGNORE_INDEX)
    L1 = causal_lm_loss(lm_logits, lm_labels)
    L2 = F.cross_entropy(class_logits, labels)
    return {"L1": L1, "L2": L2, "L3": L2 + lam * L1}


# ----------------------------------------------------------------------------- BERT
class BertEncoder(nn.Module):
    """BERT's encoder: ``BertEmbeddings`` (token + segment + position) → ``n_layers`` encoder layers.

    The layers are ``course_lib.mha.EncoderLayer`` (bidirectional: no causal mask; padding keys
    masked out), pre-norm with a final LayerNorm (Chapter 9: trains without a warm-up at this
    size; BERT itself is post-norm). ``forward(input_ids [B, L], token_type_ids [B, L] | None,
    attention_mask [B, L] | None)`` → ``[B, L, d_model]``.
    """

    def __init__(self, vocab_size: int, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 max_position: int = 128, d_ff: int | None = None, dropout: float = 0.0, pad_id: int = 0):
        super().__init__()
        check_int("vocab_size", vocab_size)
        check_int("d_model", d_model)
        check_int("n_layers", n_layers)
        check_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"n_heads: expected a divisor of d_model = {d_model}; got {n_heads}")
        self.embeddings = BertEmbeddings(vocab_size, d_model, max_position, 2, layer_norm_eps=1e-5, dropout=dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff or 4 * d_model, dropout=dropout, activation="gelu", norm_first=True)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.pad_id = pad_id

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("input_ids", input_ids, ndim=2)
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask: expected the shape of input_ids {tuple(input_ids.shape)}; "
                                 f"got {tuple(attention_mask.shape)}")
            mask = attention_mask.bool()[:, None, None, :]           # [B, 1, 1, L]: every query, real keys
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class BertForPreTraining(nn.Module):
    """``BertEncoder`` with BERT's two pre-training heads.

    * MLM head: ``LayerNorm(GELU(h W_t))`` then the word-embedding matrix (tied) + a bias:
      ``mlm_logits`` ``[B, L, vocab_size]``;
    * NSP head on ``[CLS]`` (position 0): the pooler ``tanh(h_[CLS] W_p)`` then a linear map to
      2 classes (0 = NotNext, 1 = IsNext): ``nsp_logits`` ``[B, 2]``.

    ``forward(input_ids, token_type_ids=None, attention_mask=None)`` → ``(mlm_logits, nsp_logits)``.
    """

    def __init__(self, vocab_size: int, **encoder_kwargs):
        super().__init__()
        self.bert = BertEncoder(vocab_size, **encoder_kwargs)
        d = self.bert.norm.normalized_shape[0]
        self.mlm_transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.mlm_bias = nn.Parameter(torch.zeros(vocab_size))
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh())
        self.nsp_head = nn.Linear(d, 2)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's initialisation: weights ~ N(0, 0.02²), biases 0 (PyTorch's default N(0, 1)
        embeddings would start the tied MLM logits at a loss of ~20 nats)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        h = self.bert(input_ids, token_type_ids, attention_mask)                  # [B, L, D]
        word = self.bert.embeddings.word_embeddings.weight                          # [V, D]
        mlm_logits = self.mlm_transform(h) @ word.T + self.mlm_bias                 # [B, L, V]
        nsp_logits = self.nsp_head(self.pooler(h[:, 0]))                            # [B, 2]
        return mlm_logits, nsp_logits


def mlm_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_token_id: int, vocab_size: int,
              special_token_ids=(), mlm_probability: float = 0.15, generator: torch.Generator | None = None):
    """BERT's MLM corruption of a padded batch: ``(masked_input_ids, labels)``, both ``[B, L]``.

    15% of the real, non-special tokens are selected (never padding — ``attention_mask`` is 0
    there — nor ``[CLS]``/``[SEP]``); of those 80% become ``[MASK]``, 10% a random id in
    ``[0, vocab_size)`` (the whole vocabulary, as BERT's code does), 10% stay. ``labels`` holds the original id at selected positions, −100
    elsewhere. This is ``course_lib.masks.mlm_mask`` (Chapter 3) with the padding mask passed in.
    """
    check_tensor("attention_mask", attention_mask, ndim=2)
    return mlm_mask(input_ids, mlm_probability=mlm_probability, mask_token_id=mask_token_id, vocab_size=vocab_size,
                    special_token_ids=special_token_ids, attention_mask=attention_mask, generator=generator)


def nsp_pairs(documents, n_pairs: int, *, p_next: float = 0.5, seed: int = 0) -> list[tuple[list, list, int]]:
    """``n_pairs`` NSP examples ``(A, B, is_next)`` from ``documents`` (lists of sentences).

    A is a sentence ``i`` of a random document with a next sentence. With probability ``p_next``
    B is sentence ``i + 1`` of the same document (``is_next = 1``); otherwise B is a random
    sentence of a *different* document (``is_next = 0``) — a sentence of the same document would
    often be about the same thing, and the label would be wrong in spirit.
    """
    check_int("n_pairs", n_pairs)
    check_probability("p_next", p_next, below_one=False)
    documents = [list(d) for d in documents]
    if len(documents) < 2:
        raise ValueError(f"documents: expected at least 2 documents (negatives come from another); got {len(documents)}")
    firsts = [d for d, doc in enumerate(documents) if len(doc) >= 2]
    if not firsts or any(len(doc) == 0 for doc in documents):
        raise ValueError("documents: expected non-empty documents, at least one with 2 sentences")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        d = rng.choice(firsts)
        i = rng.randrange(len(documents[d]) - 1)
        if rng.random() < p_next:
            pairs.append((documents[d][i], documents[d][i + 1], 1))
        else:
            other = rng.choice([e for e in range(len(documents)) if e != d])
            pairs.append((documents[d][i], rng.choice(documents[other]), 0))
    return pairs


def bert_input(a, b, *, cls_id: int, sep_id: int, max_len: int) -> tuple[list[int], list[int]]:
    """``[CLS] A [SEP] B [SEP]`` and its segment ids (0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``).

    The longer of A and B is cut from its end until the pair fits ``max_len`` tokens (BERT's rule).
    Returns ``(input_ids, token_type_ids)``, lists of the same length ``≤ max_len``.
    """
    check_int("max_len", max_len, 5)
    a, b = [int(t) for t in a], [int(t) for t in b]
    while len(a) + len(b) > max_len - 3:
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    ids = [cls_id] + a + [sep_id] + b + [sep_id]
    return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)


def collate_pairs(pairs, *, cls_id: int, sep_id: int, max_len: int, pad_id: int = 0):
    """A right-padded batch from ``(A, B, is_next)`` pairs:
    ``(input_ids, token_type_ids, attention_mask)`` ``[N, max_len]`` and ``is_next`` ``[N]``."""
    rows = [bert_input(a, b, cls_id=cls_id, sep_id=sep_id, max_len=max_len) for a, b, _ in pairs]
    N = len(rows)
    ids = torch.full((N, max_len), pad_id, dtype=torch.long)
    seg = torch.zeros(N, max_len, dtype=torch.long)
    att = torch.zeros(N, max_len, dtype=torch.long)
    for r, (i, s) in enumerate(rows):
        ids[r, :len(i)] = torch.tensor(i)
        seg[r, :len(s)] = torch.tensor(s)
        att[r, :len(i)] = 1
    return ids, seg, att, torch.tensor([p[2] for p in pairs], dtype=torch.long)


def bert_pretraining_loss(mlm_logits: torch.Tensor, nsp_logits: torch.Tensor | None, mlm_labels: torch.Tensor,
                          is_next: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"mlm", "nsp", "loss"}``: MLM cross-entropy over the selected tokens (labels ≠ −100) plus
    NSP cross-entropy on ``[CLS]``; ``nsp_logits=None`` drops NSP (RoBERTa: MLM alone)."""
    check_tensor("mlm_logits", mlm_logits, ndim=3)
    if mlm_labels.shape != mlm_logits.shape[:2]:
        raise ValueError(f"mlm_labels: expected shape (B, L) = {tuple(mlm_logits.shape[:2])}; got {tuple(mlm_labels.shape)}")
    mlm = F.cross_entropy(mlm_logits.transpose(1, 2), mlm_labels, ignore_index=IGNORE_INDEX)
    out = {"mlm": mlm, "loss": mlm}
    if nsp_logits is not None:
        if is_next is None:
            raise ValueError("is_next: expected the NSP labels [B] with nsp_logits; got None")
        out["nsp"] = F.cross_entropy(nsp_logits, is_next)
        out["loss"] = mlm + out["nsp"]
    return out


# ----------------------------------------------------------------------------- offline data
def load_documents(files=STDLIB_FILES, root: str | Path | None = None) -> dict[str, str]:
    """``{file name: source text}`` of standard-library files (missing ones skipped): one document each."""
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    docs = {name: (root / name).read_text(encoding="utf-8") for name in files if (root / name).is_file()}
    if not docs:
        raise ValueError(f"files: expected standard-library sources under {root}; found none of {tuple(files)}")
    return docs


def document_sentences(text: str, min_chars: int = 12, *, keep_indent: bool = False) -> list[str]:
    """A document's "sentences": its lines with at least ``min_chars`` characters besides white space,
    in order; stripped, or with their indentation kept (``keep_indent``: only trailing space removed)."""
    return [line.rstrip() if keep_indent else line.strip() for line in text.splitlines()
            if len(line.strip()) >= min_chars]


def module_lines(files=CLASSIFICATION_FILES, *, min_chars: int = 16, max_chars: int = 48,
                 root: str | Path | None = None) -> list[tuple[str, int]]:
    """The classification task: ``(line, label)`` with ``label`` = index of the file in ``files``.

    Lines are stripped, at least ``min_chars`` long, cut to ``max_chars``, deduplicated within a
    file (the same line in two files keeps both labels: the task is not always solvable).
    """
    docs = load_documents(files, root)
    out = []
    for label, name in enumerate(files):
        if name not in docs:
            raise ValueError(f"files: {name} is missing from the standard library under {root}")
        seen = set()
        for s in document_sentences(docs[name], min_chars):
            s = s[:max_chars]
            if s not in seen:
                seen.add(s)
                out.append((s, label))
    return out


def acceptability_lines(files=CLASSIFICATION_FILES, *, min_words: int = 4, max_chars: int = 40, seed: int = 0,
                        root: str | Path | None = None) -> list[tuple[str, int]]:
    """A CoLA-like task on code: is this a real line of Python (1) or one with its words shuffled (0)?

    Every distinct stripped line of ``files`` with at least ``min_words`` space-separated words and
    at most ``max_chars`` characters appears once, either as it is or — with probability 1/2 — with
    its words in a random different order (same characters, broken syntax). Returns
    ``(line, label)`` in file order; no line appears in both forms.
    """
    check_int("min_words", min_words, 2)
    rng = random.Random(seed)
    docs = load_documents(files, root)
    out, seen = [], set()
    for name in files:
        for s in document_sentences(docs.get(name, ""), 1):
            words = s.split(" ")
            if len(words) < min_words or len(s) > max_chars or s in seen or len(set(words)) < 2:
                continue
            seen.add(s)
            if rng.random() < 0.5:
                out.append((s, 1))
                continue
            shuffled = words[:]
            while shuffled == words:
                rng.shuffle(shuffled)
            out.append((" ".join(shuffled), 0))
    return out


def encode_batch(sequences, pad_id: int = 0, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of ids to one ``[B, T]`` tensor: ``(input_ids, attention_mask)`` (1 = real).

    ``side="left"`` (the decoder's convention: every sequence ends in the last column) or ``"right"``.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right'; got {side!r}")
    seqs = [list(s) for s in sequences]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("sequences: expected at least one non-empty sequence of ids")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[r, cols] = torch.tensor(s, dtype=torch.long)
        mask[r, cols] = 1
    return ids, mask


# ----------------------------------------------------------------------------- prompting
def few_shot_prompt(instruction: str, examples, query: str, *, arrow: str = " => ") -> str:
    """The task written as text (GPT-2/GPT-3 prompting): instruction, k solved examples, the query.

    ``examples`` is a list of ``(input, output)`` strings: none = zero-shot, one = one-shot, more =
    few-shot. The prompt ends with ``query + arrow`` — the model writes the answer next; the
    query's answer is never in the prompt.
    """
    lines = [instruction] if instruction else []
    lines += [f"{x}{arrow}{y}" for x, y in examples]
    lines.append(f"{query}{arrow.rstrip()}")
    return "\n".join(lines)


# In-context learning: a family of functions on Z_16; a sequence uses one, drawn at random.
ICL_N = 16
ICL_FUNCTIONS = {
    "x": lambda x: x,
    "x + 1": lambda x: (x + 1) % ICL_N,
    "x + 5": lambda x: (x + 5) % ICL_N,
    "2x": lambda x: (2 * x) % ICL_N,
    "3x + 1": lambda x: (3 * x + 1) % ICL_N,
    "15 − x": lambda x: ICL_N - 1 - x,
    "x // 2": lambda x: x // 2,
    "x mod 4": lambda x: x % 4,
}


def _function_table() -> torch.Tensor:
    """``[n_functions, ICL_N]``: f(x) for every function of :data:`ICL_FUNCTIONS` and x."""
    return torch.tensor([[f(x) for x in range(ICL_N)] for f in ICL_FUNCTIONS.values()], dtype=torch.long)


def icl_prompt(examples, x_query: int) -> list[int]:
    """Ids ``x₁ y₁ x₂ y₂ … x_k y_k x_q`` for the in-context model: k examples, then the query
    (whose answer ``y_q`` the model predicts next — it is never in the prompt)."""
    out = []
    for x, y in examples:
        out += [int(x), int(y)]
    return out + [int(x_query)]


def icl_batch(batch_size: int, n_examples: int, generator: torch.Generator | None = None):
    """``(input_ids [B, 2K], function_index [B])``: each row ``x₁ f(x₁) … x_K f(x_K)`` for its own f.

    The x are uniform in ``[0, 16)`` and independent; f is uniform over :data:`ICL_FUNCTIONS`.
    The model's prediction at column ``2k`` (the token ``x_{k+1}``) is its answer after k examples.
    """
    check_int("batch_size", batch_size)
    check_int("n_examples", n_examples)
    table = _function_table()
    fn = torch.randint(len(table), (batch_size,), generator=generator)
    x = torch.randint(ICL_N, (batch_size, n_examples), generator=generator)
    y = table[fn[:, None], x]
    return torch.stack([x, y], dim=-1).view(batch_size, 2 * n_examples), fn


def ideal_icl_accuracy(n_examples: int, n_samples: int = 20000, seed: int = 0) -> list[float]:
    """Accuracy after k = 0 … K − 1 examples of the ideal learner that knows the family and the prior:
    it predicts the most frequent answer at ``x_{k+1}`` among the functions that fit the k examples."""
    check_int("n_examples", n_examples)
    g = torch.Generator().manual_seed(seed)
    ids, fn = icl_batch(n_samples, n_examples, g)
    table = _function_table()                                   # [F, N]
    x, y = ids[:, 0::2], ids[:, 1::2]                           # [S, K]
    consistent = torch.ones(n_samples, len(table), dtype=torch.bool)
    acc = []
    for k in range(n_examples):
        answers = table[:, x[:, k]].T                           # [S, F]: every f's answer at x_{k+1}
        votes = F.one_hot(answers, ICL_N) * consistent[..., None]       # [S, F, N]
        guess = votes.sum(1).argmax(-1)                         # ties → the smallest answer
        acc.append(float((guess == y[:, k]).float().mean()))
        consistent &= answers == y[:, k:k + 1]
    return acc
