"""Pre-training, fine-tuning and in-context learning, measured at toy scale (Chapter 14).

Three commands, each writes ``results/pretraining_<name>.{json,png}`` (numbers, the exact
command, the settings, torch, the machine, the wall time); Chapter 14 loads and shows them::

    python -m course_lib.experiments.pretraining finetune   # GPT: fine-tuned vs from scratch, L2 vs L3
    python -m course_lib.experiments.pretraining bert       # BERT: MLM accuracy vs unigram, NSP accuracy
    python -m course_lib.experiments.pretraining roberta    # the same BERT with MLM only (RoBERTa drops NSP)
    python -m course_lib.experiments.pretraining icl        # in-context learning: accuracy vs k
    python -m course_lib.experiments.pretraining icl --quick --out /tmp/x   # tiny, seconds

**finetune.** Which of four standard-library modules (``pretraining.CLASSIFICATION_FILES``, none of
them in the pre-training text) does a line of code come from? A balanced labelled set of n lines,
n = 16 … 1024, and a fixed balanced test set. Four learners: the Chapter 4 decoder *from scratch*
(same architecture, random weights, L2); the *pre-trained* decoder (``checkpoints/ch04_char_lm.pt``)
frozen, only the head trained (a linear probe, L2); the pre-trained decoder fine-tuned whole with L2;
and with L3 = L2 + λ·L1 (λ = 0.5). Inputs are GPT's ``[start] line [extract]``, left-padded.

**bert.** A small BERT (``pretraining.BertForPreTraining``) pre-trained on NSP pairs of lines of the
corpus files (documents), with MLM (15%, 80/10/10) + NSP. **roberta** is the same run with MLM only
(RoBERTa's choice): the same model, data, seed and held-out set, a separate command so that each
stays within 15 minutes on a 2-core CPU.
Held-out pairs come from the last 10% of every file. Reports the masked-token accuracy against the
unigram baseline (always the most frequent training character), and the NSP accuracy.

**icl.** A small decoder trained on sequences ``x₁ f(x₁) … x_K f(x_K)`` with f drawn for each
sequence from ``pretraining.ICL_FUNCTIONS``; accuracy of its prediction of ``f(x_{k+1})`` after k
examples, for k = 0 … K − 1, next to the ideal learner's (``pretraining.ideal_icl_accuracy``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import pretraining as P
from course_lib.data import CharCorpus
from course_lib.masks import IGNORE_INDEX
from course_lib.model import DecoderLM, ModelConfig
from course_lib.train import load_checkpoint
from course_lib.experiments import command_line, run_meta
from course_lib.utils import set_seed

__all__ = ["RESULTS_DIR", "CHECKPOINT", "SETTINGS", "QUICK", "run_finetune", "run_bert", "run_icl",
           "balanced_sample", "encode_examples", "classification_accuracy",
           "load_results", "plot_results", "main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "ch04_char_lm.pt"
METHODS = ("from scratch (L2)", "pre-trained LM score (L1 only)", "pre-trained, frozen (L2)",
           "pre-trained, fine-tuned (L2)", "pre-trained, fine-tuned (L3)")
TASKS = {"acceptability": P.acceptability_lines, "module": P.module_lines}

SETTINGS = {
    "finetune": {"task": "acceptability", "n_labels": [16, 64, 256], "n_test_per_class": 150, "max_chars": 40,
                 "steps": 80,
                 "batch_size": 16, "lr": 1e-3, "lam": 0.5, "seeds": [0, 1, 2]},
    "bert": {"variants": ["MLM + NSP"], "steps": 3000, "batch_size": 32, "max_len": 64, "d_model": 64, "n_layers": 2, "n_heads": 4,
             "lr": 2e-3, "n_eval_pairs": 2000, "seed": 0},
    "icl": {"n_examples": 16, "steps": 2000, "batch_size": 64, "d_model": 64, "n_layers": 3, "n_heads": 4,
            "lr": 1e-3, "n_eval": 4000, "seed": 0},
}
QUICK = {
    "finetune": {"task": "acceptability", "n_labels": [16, 64], "n_test_per_class": 20, "max_chars": 40, "steps": 5, "batch_size": 8, "lr": 1e-3,
                 "lam": 0.5, "seeds": [0]},
    "bert": {"variants": ["MLM + NSP"], "steps": 5, "batch_size": 8, "max_len": 32, "d_model": 32, "n_layers": 1, "n_heads": 2,
             "lr": 2e-3, "n_eval_pairs": 40, "seed": 0},
    "icl": {"n_examples": 6, "steps": 5, "batch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2,
            "lr": 1e-3, "n_eval": 200, "seed": 0},
}

for _table in (SETTINGS, QUICK):  # roberta = bert with MLM only
    _table["roberta"] = {**_table["bert"], "variants": ["MLM only"]}


def _opt(params, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def _lr(step, steps, lr):
    warm = max(1, steps // 10)
    return lr * min(1.0, (step + 1) / warm) * (1 - 0.9 * max(0, step - warm) / max(1, steps - warm))


def _optimise(params, steps: int, lr: float, step_loss):
    """The three commands' training loop: AdamW, :func:`_lr`'s schedule, gradients clipped at 1.

    ``step_loss(step)`` returns the loss of one batch (a tensor, or a dict whose ``"loss"`` is
    minimised); the loop yields ``(step, that value)`` after each update, for the caller to record.
    """
    params = list(params)
    opt = _opt(params, lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        out = step_loss(step)
        opt.zero_grad(set_to_none=True)
        (out["loss"] if isinstance(out, dict) else out).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        yield step, out


# ----------------------------------------------------------------------------- (a) fine-tuning
def classification_data(task: str, n_test_per_class: int, max_chars: int = 48, seed: int = 0):
    """``(pool, test)``: lists of ``(line, label)`` of ``task`` (a key of :data:`TASKS`); the test set
    balanced, ``n_test_per_class`` per class."""
    lines = TASKS[task](max_chars=max_chars)
    rng = random.Random(seed)
    rng.shuffle(lines)
    test, pool, taken = [], [], [0] * (1 + max(y for _, y in lines))
    for s, y in lines:
        if taken[y] < n_test_per_class:
            test.append((s, y))
            taken[y] += 1
        else:
            pool.append((s, y))
    return pool, test


def balanced_sample(pool, n: int, seed: int) -> list:
    """``n`` labelled examples ``(line, label)`` drawn from ``pool``, the same number of each class."""
    rng = random.Random(seed)
    by = {}
    for s, y in pool:
        by.setdefault(y, []).append((s, y))
    per = n // len(by)
    return [ex for y in sorted(by) for ex in rng.sample(by[y], per)]


def encode_examples(examples, tok, sp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPT's input ``[start] line [extract]`` for each ``(line, label)``, left-padded:
    ``(input_ids [B, T], attention_mask [B, T], labels [B])``; ``sp`` holds the ids of ``<s>`` and ``<e>``."""
    seqs = [P.gpt_input(tok.encode(s), start_id=sp["<s>"], extract_id=sp["<e>"]) for s, _ in examples]
    ids, att = P.encode_batch(seqs)
    return ids, att, torch.tensor([y for _, y in examples])


@torch.no_grad()
def classification_accuracy(clf, ids, att, y, batch: int = 200) -> float:
    """The share of ``y`` that the classifier ``clf`` (a ``GPTClassifier``) gets right, in batches."""
    clf.eval()
    right = 0
    for i in range(0, len(y), batch):
        _, logits = clf(ids[i:i + batch], att[i:i + batch])
        right += int((logits.argmax(-1) == y[i:i + batch]).sum())
    return right / len(y)


@torch.no_grad()
def _mean_nll(lm, tok, lines, batch=200):
    """Mean next-token loss of every line under the pre-trained LM (nats per character): ``[N]``."""
    out = []
    for i in range(0, len(lines), batch):
        ids, att = P.encode_batch([tok.encode(s) for s in lines[i:i + batch]])
        logits = lm(ids, attention_mask=att)
        targets = ids[:, 1:].masked_fill(att[:, 1:] == 0, IGNORE_INDEX)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        out.append(nll.sum(1) / (targets != IGNORE_INDEX).sum(1))
    return torch.cat(out)


def _lm_score_accuracy(lm, tok, labelled, test) -> float:
    """Binary task, no training: label 1 when the LM's loss on the line is below a threshold, the
    threshold that is most accurate on the labelled examples (L1's knowledge alone)."""
    score = _mean_nll(lm, tok, [s for s, _ in labelled])
    y = torch.tensor([lab for _, lab in labelled])
    best = max(score.tolist(), key=lambda t: ((score <= t).long() == y).float().mean().item())
    t_score = _mean_nll(lm, tok, [s for s, _ in test])
    t_y = torch.tensor([lab for _, lab in test])
    return ((t_score <= best).long() == t_y).float().mean().item()


def fine_tune(clf, ids, att, y, *, steps, batch_size, lr, objective="L2", lam=0.5, frozen=False, seed=0):
    """Train ``clf`` (a ``GPTClassifier``) on the labelled set for ``steps`` AdamW steps; returns the losses."""
    g = torch.Generator().manual_seed(seed)
    if frozen:                                              # a linear probe: no gradient into the body
        clf.transformer.requires_grad_(False)
    params = [p for p in clf.parameters() if p.requires_grad]
    clf.train()

    def step_loss(step):
        idx = torch.randint(len(y), (min(batch_size, len(y)),), generator=g)
        b_ids, b_att = ids[idx], att[idx]
        keep = b_att.sum(0) > 0                             # drop columns that are padding in every row
        b_ids, b_att = b_ids[:, keep], b_att[:, keep]
        lm_logits, logits = clf(b_ids, b_att)
        return P.gpt_objectives(lm_logits, logits, b_ids, y[idx], b_att, lam=lam)[objective]

    history = [loss.item() for _, loss in _optimise(params, steps, lr, step_loss)]
    clf.eval()
    return history


def run_finetune(s: dict, log=print) -> dict:
    base, tok, _ = load_checkpoint(CHECKPOINT)
    sp = P.special_ids(tok.vocab_size, ["<s>", "<e>"])
    pool, test = classification_data(s["task"], s["n_test_per_class"], s["max_chars"])
    n_classes = 1 + max(y for _, y in test)
    t_ids, t_att, t_y = encode_examples(test, tok, sp)
    acc = {m: {} for m in METHODS}
    per_seed = {m: {} for m in METHODS}      # every seed's accuracy: a different labelled set and initialisation
    for n in s["n_labels"]:
        for m in METHODS:
            if m.startswith("pre-trained LM score") and n_classes != 2:
                continue
            runs = []
            for seed in s["seeds"]:
                labelled = balanced_sample(pool, n, seed)
                if m.startswith("pre-trained LM score"):
                    runs.append(_lm_score_accuracy(base, tok, labelled, test))
                    continue
                ids, att, y = encode_examples(labelled, tok, sp)
                set_seed(seed)
                lm = P.resize_token_embeddings(base, tok.vocab_size + len(sp), seed=seed)
                if m.startswith("from scratch"):
                    lm = DecoderLM(lm.config)
                clf = P.GPTClassifier(lm, n_classes)
                fine_tune(clf, ids, att, y, steps=s["steps"], batch_size=s["batch_size"], lr=s["lr"],
                          objective="L3" if "L3" in m else "L2", lam=s["lam"], frozen="frozen" in m, seed=seed)
                runs.append(classification_accuracy(clf, t_ids, t_att, t_y))
            acc[m][str(n)] = round(sum(runs) / len(runs), 4)
            per_seed[m][str(n)] = [round(r, 4) for r in runs]
            log(f"n = {n:5d}  {m:>30}: {acc[m][str(n)]:.3f}  (seeds {[round(r, 3) for r in runs]})")
    acc = {m: a for m, a in acc.items() if a}
    return {"accuracy": acc, "accuracy_per_seed": {m: per_seed[m] for m in acc}, "n_labels": s["n_labels"], "chance": 1 / n_classes, "task": s["task"],
            "files": list(P.CLASSIFICATION_FILES), "n_test": len(test), "n_pool": len(pool),
            "examples": [list(ex) for ex in test[:6]],
            "n_parameters": base.num_parameters()}


# ----------------------------------------------------------------------------- (b) BERT
def bert_documents(tok):
    """``(train_docs, eval_docs)``: per corpus file, the encoded lines of its first 90% / last 10%."""
    train, held = [], []
    for text in P.load_documents().values():
        sents = [tok.encode(x) for x in P.document_sentences(text, keep_indent=True)]   # indentation: a cue to order
        cut = int(len(sents) * 0.9)
        if cut >= 2 and len(sents) - cut >= 2:
            train.append(sents[:cut])
            held.append(sents[cut:])
    return train, held


def run_bert(s: dict, log=print) -> dict:
    corpus = CharCorpus()
    tok = corpus.tokenizer
    sp = P.special_ids(tok.vocab_size, ["[CLS]", "[SEP]", "[MASK]"])
    V = tok.vocab_size + len(sp)
    special = (tok.pad_id, sp["[CLS]"], sp["[SEP]"])
    train_docs, eval_docs = bert_documents(tok)
    counts = torch.bincount(corpus.train, minlength=V)
    unigram_id = int(counts.argmax())
    g_eval = torch.Generator().manual_seed(12345)
    e_ids, e_seg, e_att, e_next = P.collate_pairs(P.nsp_pairs(eval_docs, s["n_eval_pairs"], seed=999),
                                                  cls_id=sp["[CLS]"], sep_id=sp["[SEP]"], max_len=s["max_len"])
    e_in, e_lab = P.mlm_batch(e_ids, e_att, mask_token_id=sp["[MASK]"], vocab_size=V, special_token_ids=special,
                              generator=g_eval)
    out = {"variants": {}, "vocab_size": V, "unigram_token": tok.itos[unigram_id],
           "n_train_documents": len(train_docs)}
    sel = e_lab != IGNORE_INDEX
    out["unigram_accuracy"] = round(float((e_lab[sel] == unigram_id).float().mean()), 4)
    out["n_masked_eval_tokens"] = int(sel.sum())
    for variant in s["variants"]:
        use_nsp = variant == "MLM + NSP"
        set_seed(s["seed"])
        model = P.BertForPreTraining(V, d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                                     max_position=s["max_len"])
        g = torch.Generator().manual_seed(s["seed"])
        curve = []
        model.train()

        def step_loss(step):
            ids, seg, att, nxt = P.collate_pairs(P.nsp_pairs(train_docs, s["batch_size"], seed=step),
                                                 cls_id=sp["[CLS]"], sep_id=sp["[SEP]"], max_len=s["max_len"])
            inp, lab = P.mlm_batch(ids, att, mask_token_id=sp["[MASK]"], vocab_size=V, special_token_ids=special,
                                   generator=g)
            mlm, nsp = model(inp, seg, att)
            return P.bert_pretraining_loss(mlm, nsp if use_nsp else None, lab, nxt)

        for step, losses in _optimise(model.parameters(), s["steps"], s["lr"], step_loss):
            if step % max(1, s["steps"] // 20) == 0 or step == s["steps"] - 1:
                curve.append([step, round(losses["mlm"].item(), 4)])
        model.eval()
        with torch.no_grad():
            mlm, nsp = [], []
            for i in range(0, len(e_ids), 250):
                a, b = model(e_in[i:i + 250], e_seg[i:i + 250], e_att[i:i + 250])
                mlm.append(a.argmax(-1))
                nsp.append(b.argmax(-1))
            mlm, nsp = torch.cat(mlm), torch.cat(nsp)
        res = {"mlm_accuracy": round(float((mlm[sel] == e_lab[sel]).float().mean()), 4),
               "mlm_loss_curve": curve, "n_parameters": model.num_parameters()}
        if use_nsp:
            res["nsp_accuracy"] = round(float((nsp == e_next).float().mean()), 4)
        out["variants"][variant] = res
        log(f"{variant:>10}: " + ", ".join(f"{k} {v}" for k, v in res.items() if k != "mlm_loss_curve"))
    out["nsp_fraction_true"] = round(float(e_next.float().mean()), 4)
    return out


# ----------------------------------------------------------------------------- (c) in-context learning
def run_icl(s: dict, log=print) -> dict:
    K = s["n_examples"]
    set_seed(s["seed"])
    config = ModelConfig(vocab_size=P.ICL_N, d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                         max_seq_len=2 * K)
    model = DecoderLM(config)
    g = torch.Generator().manual_seed(s["seed"])
    curve = []
    model.train()

    def step_loss(step):
        ids, _ = P.icl_batch(s["batch_size"], K, g)
        logits = model(ids)[:, 0::2]                        # the columns of x_{k+1}: they predict f(x_{k+1})
        return F.cross_entropy(logits.reshape(-1, P.ICL_N), ids[:, 1::2].reshape(-1))

    for step, loss in _optimise(model.parameters(), s["steps"], s["lr"], step_loss):
        if step % max(1, s["steps"] // 20) == 0 or step == s["steps"] - 1:
            curve.append([step, round(loss.item(), 4)])
    model.eval()
    ids, _ = P.icl_batch(s["n_eval"], K, torch.Generator().manual_seed(10_000 + s["seed"]))
    with torch.no_grad():
        pred = model(ids)[:, 0::2].argmax(-1)
    acc = (pred == ids[:, 1::2]).float().mean(0)
    out = {"k": list(range(K)), "accuracy": [round(float(a), 4) for a in acc],
           "ideal": [round(a, 4) for a in P.ideal_icl_accuracy(K, n_samples=s["n_eval"], seed=10_000 + s["seed"])],
           "chance": 1 / P.ICL_N, "functions": list(P.ICL_FUNCTIONS), "loss_curve": curve,
           "n_parameters": model.num_parameters()}
    log("k:        " + " ".join(f"{k:5d}" for k in out["k"]))
    log("model:    " + " ".join(f"{a:5.2f}" for a in out["accuracy"]))
    log("ideal:    " + " ".join(f"{a:5.2f}" for a in out["ideal"]))
    return out


# ----------------------------------------------------------------------------- show
def load_results(name: str, path: str | Path | None = None) -> dict:
    """The saved results of one command (default: ``results/pretraining_<name>.json``)."""
    if name not in SETTINGS:
        raise ValueError(f"name: expected one of {tuple(SETTINGS)}; got {name!r}")
    path = RESULTS_DIR / f"pretraining_{name}.json" if path is None else Path(path)
    return json.loads(Path(path).read_text())


def plot_results(name: str, results: dict, ax=None):
    """One panel per command: accuracy vs labels (finetune), accuracies as bars (bert), accuracy vs k (icl)."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    fig = ax.figure
    if name == "finetune":
        spread = results.get("accuracy_per_seed", {})
        for m, accs in results["accuracy"].items():
            ns = [int(n) for n in accs]
            line, = ax.plot(ns, list(accs.values()), "o-", label=m)
            if m in spread and len(next(iter(spread[m].values()))) > 1:      # min–max over the seeds
                ax.fill_between(ns, [min(spread[m][str(n)]) for n in ns], [max(spread[m][str(n)]) for n in ns],
                                color=line.get_color(), alpha=0.15, lw=0)
        ax.axhline(results["chance"], color="gray", ls=":", label="chance")
        title = {"acceptability": "a real line of code, or its words shuffled?",
                 "module": "which module is this line from?"}[results.get("task", "module")]
        ax.set(xscale="log", xlabel="labelled examples", ylabel="test accuracy", title=title)
        ax.set_xticks(results["n_labels"], [str(n) for n in results["n_labels"]])
        ax.minorticks_off()
    elif name in ("bert", "roberta"):
        nsp = {v: r["nsp_accuracy"] for v, r in results["variants"].items() if "nsp_accuracy" in r}
        labels = (["unigram baseline (MLM)"] + [f"{v} (MLM)" for v in results["variants"]]
                  + [f"{v} (NSP)" for v in nsp])
        values = ([results["unigram_accuracy"]] + [r["mlm_accuracy"] for r in results["variants"].values()]
                  + list(nsp.values()))
        ax.barh(labels, values, color=["gray"] + [f"C{i}" for i in range(len(values) - 1)])
        for i, v in enumerate(values):
            ax.text(v + 0.01, i, f"{v:.2f}", va="center")
        ax.axvline(0.5, color="gray", ls=":")
        ax.set(xlim=(0, 1.1), xlabel="accuracy on held-out pairs", title="a small BERT: MLM and NSP")
        fig.tight_layout()
        return fig
    elif name == "icl":
        ax.plot(results["k"], results["accuracy"], "o-", label="trained decoder")
        ax.plot(results["k"], results["ideal"], "k--", label="ideal learner (knows the family)")
        ax.axhline(results["chance"], color="gray", ls=":", label="chance (1/16)")
        ax.set(xlabel="examples in the prompt, k", ylabel="accuracy on the query", ylim=(0, 1.05),
               title="in-context learning")
    else:
        raise ValueError(f"name: expected one of {tuple(SETTINGS)}; got {name!r}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(name: str, results: dict, path) -> None:
    """The command's figure, titled with its command and wall time (``--replot`` redraws it from the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_results(name, results)
    fig.suptitle(f"{results['meta']['command']} — {results['meta']['wall_seconds']:.0f} s", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- command line
RUNS = {"finetune": run_finetune, "bert": run_bert, "roberta": run_bert, "icl": run_icl}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m course_lib.experiments.pretraining",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=tuple(RUNS))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (seconds; a smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: see SETTINGS)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=None, help=f"output directory (default {RESULTS_DIR})")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the saved JSON, run nothing")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.replot:
        out = RESULTS_DIR if args.out is None else Path(args.out)
        results = load_results(args.name, out / f"pretraining_{args.name}.json")
        save_figure(args.name, results, out / f"pretraining_{args.name}.png")
        return results
    s = dict((QUICK if args.quick else SETTINGS)[args.name])
    if args.steps is not None:
        s["steps"] = args.steps
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = RUNS[args.name](s)
    results["settings"] = s
    results["meta"] = run_meta(t0, "cpu", command_line("pretraining", argv))
    out = RESULTS_DIR if args.out is None else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pretraining_{args.name}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    save_figure(args.name, results, out / f"pretraining_{args.name}.png")
    print(f"saved {out / f'pretraining_{args.name}.json'} ({results['meta']['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
