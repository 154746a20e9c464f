"""Train or fine-tune the ranking network.

Usage::

    python -m ranker.develop train --jobs corpus/job* --out models/my_model.npz [--epochs 60] [--seed 0]
    python -m ranker.develop train --init models/relion_external_rank_v5.npz --out my_facility.npz \\
        --selection Class2D/job008/run_it025_optimiser.star:Select/job010/backup_selection.star ...
    python -m ranker.develop train --selection_list past_jobs.txt --project /data/proj --init ... --out ...
    python -m ranker.develop train --relion_star training/features_normalized.star --out ...

``--jobs``: labelled projects (``class_truth.csv``; split from ``corpus_job.json``:
"train", "val" or "heldout" (never used); unmarked jobs are split at random, by job,
with ``--val_fraction``). ``--selection``:
``OPTIMISER:BACKUP_SELECTION`` pairs from a user's own manual Select jobs (paths relative
to ``--project``); ``--selection_list`` a file of such pairs, one per line. ``--init``
starts from existing weights (fine-tuning). Writes the weights and a model card
(``.json`` and ``.md`` beside them) with data, seed, hyperparameters and metrics.

Reproducible: a fixed ``--seed`` gives the same weights on CPU (deterministic algorithms,
fixed thread count).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import numpy as np

from ranker.develop.commands import UsageError
from ranker.develop.dataset import LabelledClasses, from_relion_training_star, from_selection, from_truth_job
from ranker.develop.metrics import class_purity, roc_auc, selection_vs_oracle


def load_sources(args) -> LabelledClasses:
    parts = []
    for d in args.jobs or []:
        try:
            parts.append(from_truth_job(d, getattr(args, "target", "purity")))
        except Exception as exc:  # a broken corpus job is reported and skipped
            print(f"skipping {d}: {exc}", file=sys.stderr)
    pairs = list(args.selection or [])
    if args.selection_list:
        pairs += [ln.strip() for ln in open(args.selection_list) if ln.strip() and not ln.startswith("#")]
    for pair in pairs:
        opt, _, sel = pair.partition(":")
        parts.append(from_selection(opt, sel, args.project))
    for star in args.relion_star or []:
        parts.append(from_relion_training_star(star, args.project))
    return LabelledClasses.concat(parts)


def split_data(data: LabelledClasses, val_fraction: float, seed: int):
    """Training/validation masks, by job (never by class). Jobs marked "heldout" are used for neither."""
    jobs = sorted(set(data.job))
    marked = {j: s for j, s in zip(data.job, data.split)}
    rng = np.random.default_rng(seed)
    unmarked = [j for j in jobs if marked.get(j) not in ("train", "val", "heldout")]
    rng.shuffle(unmarked)
    n_val = int(round(val_fraction * len(unmarked)))
    val_jobs = {j for j in jobs if marked.get(j) == "val"} | set(unmarked[:n_val])
    train_jobs = {j for j in jobs if marked.get(j) == "train"} | set(unmarked[n_val:])
    return np.array([j in train_jobs for j in data.job]), np.array([j in val_jobs for j in data.job])


def _augment(torch, images, gen):
    """A random rotation by k*90 degrees and optional flip per image (meaning is invariant)."""
    k = torch.randint(0, 4, (len(images),), generator=gen)
    flip = torch.randint(0, 2, (len(images),), generator=gen).bool()
    out = images.clone()
    out[flip] = torch.flip(out[flip], dims=(-1,))
    for r in range(1, 4):
        sel = k == r
        out[sel] = torch.rot90(out[sel], r, dims=(-2, -1))
    return out


def sample_weights(data: LabelledClasses, by_particles: bool, balance_kinds: bool = False) -> np.ndarray:
    """Per-class loss weights, mean 1 over the data: sqrt(particles in the class) when
    ``by_particles`` (selection quality is counted in particles); with ``balance_kinds``
    also 1/sqrt(frequency) of the class's majority kind (rare junk kinds count more)."""
    w = np.ones(len(data))
    if by_particles:
        n = np.nan_to_num(data.n_particles, nan=np.nanmedian(data.n_particles) if np.isfinite(data.n_particles).any() else 1)
        w *= np.sqrt(np.maximum(n, 1.0))
    if balance_kinds and data.kind:
        from collections import Counter
        freq = Counter(data.kind)
        w *= np.array([1 / np.sqrt(freq[k]) for k in data.kind])
    return (w / w.mean()).astype(np.float32)


LOSSES = ("target", "regret")


def loss_labels(data: LabelledClasses, loss: str, by_particles: bool, balance_kinds: bool = False):
    """Per-class labels (N,) and loss weights (N,), mean 1, of the binary cross-entropy.

    ``loss`` "target": the labels are the training targets (purity, or purity x detail) and the
    weights :func:`sample_weights`. "regret": a cost-sensitive loss shaped like the regret the
    selection is judged by -- the label is the oracle's decision (1 = keep: at least half the class's
    particles real, featureless real particles counted as junk), and each class's weight
    :func:`sample_weights` is multiplied by |2 q - 1|, q its real fraction: deciding a class unlike the
    oracle costs |real - junk| = n |2 q - 1| particles, so a 50 % class costs nothing and a pure one
    the most. Where truth counts are unknown (user selections) q is the 0/1 target."""
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r}: one of {', '.join(LOSSES)}")
    w = sample_weights(data, by_particles, balance_kinds).astype(float)
    if loss == "target":
        return data.targets.astype(np.float32), w.astype(np.float32)
    q = class_purity(data.n_particles, data.n_true, data.targets)
    w = w * np.abs(2 * q - 1)
    if not w.sum() > 0:
        raise ValueError("loss 'regret': every class is exactly half real; nothing to learn")
    return (q >= 0.5).astype(np.float32), (w / w.mean()).astype(np.float32)


def decision_accuracy(scores, n_particles, n_true, targets, threshold: float = 0.5) -> float:
    """Fraction of particles whose class gets the oracle's keep/reject decision when classes
    scoring >= ``threshold`` are kept (oracle: keep = at least half true particles). Uses the
    targets where the truth counts are unknown (user selections)."""
    n = np.nan_to_num(np.asarray(n_particles, float), nan=1.0)
    truth = class_purity(n, n_true, targets)
    return selection_vs_oracle(np.asarray(scores) >= threshold, n, truth * n)["agreeing"] / float(n.sum())


def validation_metrics(p, data: LabelledClasses, val_mask) -> dict:
    """AUC (good >= 0.8 vs bad <= 0.2 targets), MSE and decision accuracy of validation scores p."""
    yv = data.targets[val_mask]
    sure = (yv >= 0.8) | (yv <= 0.2)
    return {"val_auc": roc_auc(p[sure], yv[sure] >= 0.8), "val_mse": float(np.mean((p - yv) ** 2)),
            "val_decision": decision_accuracy(p, data.n_particles[val_mask], data.n_true[val_mask], yv)}


def best_threshold(scores, data: LabelledClasses, mask, lo: float = 0.2, hi: float = 0.8) -> float:
    """The score threshold in [lo, hi] whose keep/reject decisions agree with the oracle's
    (keep a class iff >= 50 % of its particles are real; the target where truth counts are
    unknown) for the most particles. Ties go to the threshold nearest 0.5."""
    s = np.asarray(scores, float)
    cuts = np.unique(np.clip(np.r_[0.5, (np.sort(s)[1:] + np.sort(s)[:-1]) / 2], lo, hi))
    acc = [decision_accuracy(s, data.n_particles[mask], data.n_true[mask], data.targets[mask], t) for t in cuts]
    best = max(acc)
    return float(min((t for t, a in zip(cuts, acc) if a >= best - 1e-12), key=lambda t: abs(t - 0.5)))


TRAIN_LAYERS = ("all", "head")


def calibrate(data: LabelledClasses, train_mask, folds: int, seed: int, log=print, oof_out: str = "",
              **train_kwargs):
    """Out-of-fold calibration of the 0.5 threshold: ``folds`` networks, each trained on the
    training jobs outside one fold (split by job), score that fold; the best threshold t on
    these unseen scores gives logit_shift = -logit(t), so that 0.5 then means t.
    ``oof_out``: also save the out-of-fold scores there (.npz, one row per scored class).
    Returns (logit_shift, t, out-of-fold decision accuracy at 0.5 and at t, the out-of-fold
    scores (N,), NaN outside the training classes)."""
    from ranker.runtime.context import logit
    from ranker.runtime.model import Ranker

    jobs = np.array(sorted(set(np.array(data.job)[train_mask])))
    np.random.default_rng(seed).shuffle(jobs)
    oof = np.full(len(data), np.nan)
    for f in range(folds):
        held = np.isin(data.job, jobs[f::folds]) & train_mask
        log(f"calibration fold {f + 1} of {folds}: {int(held.sum())} classes held out")
        net, _ = train(data, train_mask & ~held, np.zeros(len(data), bool), seed=seed + 100 + f, log=lambda *a: None,
                       **train_kwargs)
        fold_model = Ranker(members=[net], path="", image_norm=train_kwargs.get("image_norm", "none"))
        oof[held] = fold_model.score(data.vectors[held], data.images[held])
    scored = train_mask & np.isfinite(oof)
    if oof_out:  # for studying a job-level second stage: scores no network saw the job of
        np.savez(oof_out, job=np.array(data.job)[scored], class_number=np.array(data.class_number)[scored],
                 score=oof[scored], n_particles=data.n_particles[scored], n_true=data.n_true[scored],
                 target=data.targets[scored], kind=np.array(data.kind or [""] * len(data))[scored])
    t = best_threshold(oof[scored], data, scored)
    n, n_true, targets = data.n_particles[scored], data.n_true[scored], data.targets[scored]
    before = decision_accuracy(oof[scored], n, n_true, targets)
    after = decision_accuracy(oof[scored], n, n_true, targets, t)
    return float(-logit(t)), t, before, after, oof


def fit_context_from_oof(data: LabelledClasses, oof, scored, logit_shift: float = 0.0) -> list[float]:
    """Job-context coefficients (a, b, c, lift; ranker.runtime.context) from out-of-fold scores of the
    training classes."""
    from ranker.develop.job_context import fit_job_context

    purity = class_purity(data.n_particles[scored], data.n_true[scored], data.targets[scored])
    return fit_job_context(oof[scored], np.array(data.job)[scored], data.n_particles[scored], purity, logit_shift)


def epoch_score(entry: dict) -> float:
    """How good an epoch is on validation: decision accuracy + AUC (- MSE if no AUC)."""
    auc = entry["val_auc"]
    return entry["val_decision"] + (auc if not np.isnan(auc) else -entry["val_mse"])


def train(data: LabelledClasses, train_mask, val_mask, epochs=60, lr=1e-3, weight_decay=1e-4, batch=64,
          dropout=0.3, seed=0, init: str | None = None, threads: int = 2, device: str = "cpu", log=print,
          weight_by_particles: bool = False, keep_epoch: str = "last", balance_kinds: bool = False,
          image_norm: str = "none", init_member: int = 0, train_layers: str = "all", loss: str = "target"):
    """Train; returns (net, history). ``keep_epoch`` "last" keeps the final weights (the
    learning rate has decayed to ~0 by then); "best" keeps the epoch with the best
    validation score (:func:`epoch_score`), which is only as reliable as the validation set
    is large. ``image_norm``: how images enter the network (:func:`ranker.model.network_images`).
    ``init_member``: which network of an ``init`` ensemble to start from (modulo its size).
    ``train_layers``: "all", or "head" (fine-tuning: the convolutions stay as ``init`` has them, in
    evaluation mode, and only the image vector and the classifier learn; fewer weights to fit to a
    small set of jobs). ``loss``: what the cross-entropy fits (:func:`loss_labels`)."""
    import torch
    from ranker.runtime.model import build_net, load_model, network_images

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    net = build_net(dropout)
    if init:
        members = load_model(init, device="cpu").members
        net.load_state_dict(members[init_member % len(members)].state_dict())
    net.to(device)
    x_img = torch.from_numpy(network_images(data.images, image_norm)[:, None])
    x_vec = torch.from_numpy(data.vectors.astype(np.float32))
    labels, weights = loss_labels(data, loss, weight_by_particles, balance_kinds)
    y, w = torch.from_numpy(labels), torch.from_numpy(weights)
    tr = np.nonzero(train_mask)[0]
    va = np.nonzero(val_mask)[0]
    if train_layers not in TRAIN_LAYERS:
        raise ValueError(f"train_layers {train_layers!r}: one of {', '.join(TRAIN_LAYERS)}")
    frozen = net.cnn_layers if train_layers == "head" else None
    if frozen is not None:
        for p in frozen.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        net.train()
        if frozen is not None:
            frozen.eval()  # no dropout in layers that do not learn
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            imgs = _augment(torch, x_img[idx], gen).to(device)
            logits = net(imgs, x_vec[idx].to(device))[:, 0]
            loss = (loss_fn(logits, y[idx].to(device)) * w[idx].to(device)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        entry = {"epoch": epoch + 1, "train_loss": total / max(1, len(tr))}
        if len(va):
            net.eval()
            with torch.no_grad():
                p = torch.sigmoid(net(x_img[va].to(device), x_vec[va].to(device))[:, 0]).cpu().numpy()
            entry.update(validation_metrics(p, data, va))
            score = epoch_score(entry)
            if score > best:
                best, best_state = score, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        history.append(entry)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            log("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    if keep_epoch == "best" and best_state is not None:
        net.load_state_dict(best_state)
    return net.cpu().eval(), history


def _short(job: str) -> str:
    """A job's folder and its parent (corpus/job0008), enough to tell corpora apart."""
    return "/".join(os.path.normpath(job).split(os.sep)[-2:])


def write_card(path: str, card: dict) -> None:
    """Model card as JSON and Markdown beside the weights."""
    base = os.path.splitext(path)[0]
    with open(base + ".json", "w") as fh:
        json.dump(card, fh, indent=1, sort_keys=True, default=float)
    lines = [f"# Model card: {os.path.basename(path)}", "", f"Trained {card['date']} with `{card['command']}`.", ""]
    lines += ["| item | value |", "|---|---|"]
    for key in ("seed", "ensemble", "epochs", "lr", "weight_decay", "batch", "dropout", "weight_by_particles", "loss", "image_norm",
                "n_train_classes",
                "n_val_classes", "n_train_jobs", "n_val_jobs", "keep_epoch", "kept_epoch", "val_auc", "val_decision", "job_context",
                "train_seconds"):
        if key in card:
            lines.append(f"| {key} | {card[key]} |")
    if card.get("calibration"):
        c = card["calibration"]
        lines.append(f"| calibration | best out-of-fold threshold {c['threshold']:.3f} ({c['folds']} folds) -> "
                     f"logit_shift {c['logit_shift']:+.3f}; out-of-fold agreement with the oracle "
                     f"{c['oof_decision_at_0.5']:.3f} -> {c['oof_decision_at_threshold']:.3f} |")
    target = card.get("target", "purity")
    lines += ["", f"Target of the labelled jobs: {target} (" + (
        "fraction of true particles x the detail the class reaches beside the job's best real class; "
        "ranker.develop.truth" if target == "detail" else "fraction of true particles in the class") + ").", ""]
    with open(base + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


def add_args(p) -> None:
    p.add_argument("--jobs", nargs="*", help="labelled projects (with class_truth.csv)")
    p.add_argument("--target", choices=("detail", "purity"), default="detail",
                   help="training target of --jobs: purity x detail the job reaches (what a user keeps; "
                        "ranker.develop.truth), or purity alone (v3 and earlier)")
    p.add_argument("--selection", nargs="*", help="OPTIMISER:BACKUP_SELECTION pairs (user's manual selections)")
    p.add_argument("--selection_list", help="file with one OPTIMISER:BACKUP_SELECTION pair per line")
    p.add_argument("--relion_star", nargs="*", help="STAR files in RELION's training layout")
    p.add_argument("--project", default=".", help="project directory for --selection/--relion_star paths")
    p.add_argument("--out", required=True, help="weights file to write")
    p.add_argument("--init", help="start from these weights (fine-tuning)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val_fraction", type=float, default=0.2, help="for jobs with no split mark")
    p.add_argument("--tta", action="store_true", help="score with the mean over 8 rotations/flips")
    p.add_argument("--train_layers", choices=TRAIN_LAYERS, default="all",
                   help="all, or head: with --init, the convolutions stay as they are and only the image vector "
                        "and the classifier learn (fewer weights for a small set of jobs)")
    p.add_argument("--keep_epoch", choices=["last", "best"], default="last",
                   help="weights of the last epoch, or of the best validation epoch")
    p.add_argument("--balance_kinds", action="store_true",
                   help="weight classes by 1/sqrt(frequency of their majority kind in the truth)")
    p.add_argument("--weight_by_particles", action="store_true",
                   help="weight each class in the loss by sqrt(its particle count)")
    p.add_argument("--loss", choices=LOSSES, default="target",
                   help="target: cross-entropy against the training target (v5 and earlier); regret: against the "
                        "oracle's keep/reject decision, each class weighted by |2 purity - 1| (the particles a wrong "
                        "decision costs), on top of --weight_by_particles / --balance_kinds")
    p.add_argument("--image_norm", choices=["none", "per_image"],
                   help="network image input: raw values (RELION's) or per-image mean 0 / stddev 1 "
                        "(default: as the --init model, else none)")
    p.add_argument("--ensemble", type=int,
                   help="train N networks (seeds seed..seed+N-1) and average their scores "
                        "(default: as many as the --init model has, else 1)")
    p.add_argument("--calibrate_folds", type=int, default=0,
                   help="fit the score shift that puts the best keep/reject threshold at 0.5, from "
                        "out-of-fold scores of K extra networks (split by job); 0 = no shift")
    p.add_argument("--job_context", action="store_true",
                   help="with --calibrate_folds: fit the job-context stage (ranker.runtime.context) on the out-of-fold "
                        "scores and store it in the weights file (fine-tuning otherwise keeps the --init model's)")
    p.add_argument("--oof_out", default="", help="with --calibrate_folds: save the out-of-fold scores of the "
                   "training classes to this .npz (job, class_number, score, n_particles, n_true, target, kind)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")


def main(args) -> int:
    if args.job_context and args.calibrate_folds < 2:
        raise UsageError("--job_context needs --calibrate_folds K (K >= 2): it is fitted on out-of-fold scores")
    if args.init:  # fine-tuning keeps the starting model's input convention and ensemble size
        from ranker.runtime.model import load_model
        start = load_model(args.init, device="cpu")
        args.image_norm = args.image_norm or start.image_norm
        args.ensemble = args.ensemble or len(start.members)
    args.image_norm = args.image_norm or "none"
    args.ensemble = args.ensemble or 1
    t0 = time.time()
    data = load_sources(args)
    train_mask, val_mask = split_data(data, args.val_fraction, args.seed)
    if not train_mask.any():
        print("no training classes", file=sys.stderr)
        return 1
    print(f"{int(train_mask.sum())} training classes from {len(set(np.array(data.job)[train_mask]))} jobs, "
          f"{int(val_mask.sum())} validation classes from {len(set(np.array(data.job)[val_mask]))} jobs")
    nets, histories = [], []
    for member in range(args.ensemble):
        if args.ensemble > 1:
            print(f"ensemble member {member + 1} of {args.ensemble} (seed {args.seed + member})")
        net, history = train(data, train_mask, val_mask, args.epochs, args.lr, args.weight_decay, args.batch,
                             args.dropout, args.seed + member, args.init, args.threads, args.device,
                             weight_by_particles=args.weight_by_particles, keep_epoch=args.keep_epoch,
                             balance_kinds=args.balance_kinds, image_norm=args.image_norm, init_member=member,
                             train_layers=args.train_layers, loss=args.loss)
        nets.append(net)
        histories.append(history)
    history = histories[0]
    calibration = {}
    # fine-tuning keeps the starting model's calibration and job context unless they are refitted
    logit_shift = start.logit_shift if args.init else 0.0
    job_context = start.job_context if args.init else None
    if args.calibrate_folds > 1:
        logit_shift, t, before, after, oof = calibrate(
            data, train_mask, args.calibrate_folds, args.seed, epochs=args.epochs, lr=args.lr,
            weight_decay=args.weight_decay, batch=args.batch, dropout=args.dropout, threads=args.threads,
            device=args.device, weight_by_particles=args.weight_by_particles, balance_kinds=args.balance_kinds,
            image_norm=args.image_norm, init=args.init, oof_out=args.oof_out, train_layers=args.train_layers,
            loss=args.loss)
        calibration = {"folds": args.calibrate_folds, "threshold": t, "logit_shift": logit_shift,
                       "oof_decision_at_0.5": before, "oof_decision_at_threshold": after}
        if args.job_context:
            job_context = fit_context_from_oof(data, oof, train_mask & np.isfinite(oof), logit_shift)
            print(f"job context (ranker.runtime.context): a, b, c, lift = {', '.join(f'{v:.3f}' for v in job_context)}")
        print(f"calibration: best out-of-fold threshold {t:.3f} (particle-weighted agreement with the oracle "
              f"{before:.3f} at 0.5 -> {after:.3f}); scores shifted by {logit_shift:+.3f} in logit")
    from ranker.runtime.model import Ranker, save_model
    best = (max((h for h in history if "val_auc" in h), key=epoch_score, default=history[-1])
            if args.keep_epoch == "best" else history[-1])
    if args.ensemble > 1 and val_mask.any():  # the ensemble's own validation figures
        ens = Ranker(members=nets, path=args.out, image_norm=args.image_norm, logit_shift=logit_shift)
        best = dict(validation_metrics(ens.score(data.vectors[val_mask], data.images[val_mask]), data, val_mask),
                    epoch=best["epoch"])
    card = {"date": datetime.date.today().isoformat(), "command": "python -m ranker.develop train " + " ".join(getattr(args, "argv", [])),
            "seed": args.seed, "epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
            "batch": args.batch, "dropout": args.dropout, "init": args.init,
            "weight_by_particles": args.weight_by_particles, "target": args.target, "loss": args.loss,
            "balance_kinds": args.balance_kinds, "tta": args.tta, "train_layers": args.train_layers,
            "image_norm": args.image_norm, "ensemble": args.ensemble, "calibration": calibration,
            "n_train_classes": int(train_mask.sum()), "n_val_classes": int(val_mask.sum()),
            "n_train_jobs": len(set(np.array(data.job)[train_mask])),
            "n_val_jobs": len(set(np.array(data.job)[val_mask])),
            "train_jobs": sorted({_short(j) for j in np.array(data.job)[train_mask]}),
            "val_jobs": sorted({_short(j) for j in np.array(data.job)[val_mask]}),
            "keep_epoch": args.keep_epoch, "kept_epoch": best["epoch"], "val_auc": best.get("val_auc"), "val_decision": best.get("val_decision"),
            "history": history, "member_histories": histories[1:],
            "train_seconds": round(time.time() - t0, 1)}
    card["job_context"] = job_context
    save_model(nets, args.out, card, tta=args.tta, image_norm=args.image_norm, logit_shift=logit_shift,
               job_context=job_context)
    write_card(args.out, card)
    print(f"wrote {args.out} (epoch {best['epoch']}, validation AUC {best.get('val_auc')}, "
          f"decision accuracy {best.get('val_decision')})")
    return 0
