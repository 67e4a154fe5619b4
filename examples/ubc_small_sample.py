"""UBC with few labelled images: does pixel supervision help? (the paper's experiment)

The U-Net-boosted classifier paper trained a ResNet34 with a U-Net decoder on
``alpha * CE + (1 - alpha) * Dice`` and reported higher accuracy than the plain
classifier on a small training set. This script repeats that comparison on a synthetic
task from :func:`sklearn_endo.datasets.make_lesions` where the class is decided by a
small lesion among look-alike distractors, so a model that learns *where* to look has
the advantage:

* ``baseline``: ``alpha=1`` (cross-entropy only, decoder unused);
* ``ubc-avg``: ``alpha=0.5``, class head on averaged encoder features (the paper);
* ``ubc-mask``: ``alpha=0.5``, mask-guided pooling (average + predicted-mask-weighted);
* ``ubc-mask-ds`` (with ``--deep-supervision``): ``ubc-mask`` with auxiliary Dice
  losses on the decoder's intermediate blocks (``deep_supervision=True``).

For each train size (images per class) and seed, a stratified training set is drawn
from one pool and every model is scored on one fixed test set: accuracy with a Wilson
95% interval (over the pooled test predictions of all seeds), the spread over seeds,
and the Dice of the predicted masks. The table is printed and a plot saved.

The full run (sizes 2 5 10 20 50, 5 seeds, 40 epochs) takes hours on a CPU; use a GPU
(``--device cuda``). ``--quick`` (sizes 2 and 5, 2 seeds, 5 epochs, 64 test images, a
few minutes on a CPU) only checks that the script runs: so few images and epochs leave
every model at chance, often predicting one class for every test image, so the three
curves (nearly) coincide. The table and the plot say so when every model is at chance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from sklearn_endo.metrics import wilson_interval
from sklearn_endo.ubc import UBCClassifier

MODELS = {
    "baseline": dict(alpha=1.0, pooling="avg"),  # what pooling="auto" gives at alpha=1
    "ubc-avg": dict(alpha=0.5, pooling="avg"),
    "ubc-mask": dict(alpha=0.5, pooling="mask"),
}


def lesions(n, args, seed):
    from sklearn_endo.datasets import make_lesions

    out = make_lesions(n, image_size=args.image_size, task=args.task,
                       n_distractors=args.distractors, return_masks=True,
                       random_state=seed)
    X, y, masks = (out.images, out.target, out.masks) if hasattr(out, "masks") else out
    return np.asarray(X), np.asarray(y), np.asarray(masks)


def draw(y, per_class, rng):
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in np.unique(y)])


def run(args):
    X_pool, y_pool, m_pool = lesions(args.n_pool, args, seed=1)
    X_test, y_test, m_test = lesions(args.n_test, args, seed=2)
    rows = []
    n_models = len(args.models or [*MODELS, *(["ds"] if args.deep_supervision else [])])
    bar = tqdm(total=len(args.sizes) * n_models * args.seeds, desc="fits", unit="fit",
               delay=2)
    models = dict(MODELS)
    if args.deep_supervision:
        models["ubc-mask-ds"] = dict(alpha=0.5, pooling="mask", deep_supervision=True)
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models}
    for per_class in args.sizes:
        for name, cfg in models.items():
            correct, accs, dices, start = 0, [], [], time.perf_counter()
            one_class = 0  # seeds whose model predicted one class for every test image
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                idx = draw(y_pool, per_class, np.random.default_rng(100 + seed))
                clf = UBCClassifier(
                    args.encoder, pretrained=args.pretrained, image_size=args.image_size,
                    max_epochs=args.epochs, batch_size=min(args.batch_size, len(idx)), lr=args.lr,
                    random_state=seed, device=args.device, verbose=0, **cfg,
                ).fit(X_pool[idx], y_pool[idx], masks=m_pool[idx])
                pred = clf.predict(X_test)
                hits = pred == y_test
                correct += int(hits.sum())
                accs.append(hits.mean())
                one_class += len(np.unique(pred)) == 1
                if cfg["alpha"] < 1:
                    dices.append(clf.dice_score(X_test, m_test))
                bar.update()
            n = len(y_test) * args.seeds
            low, high = wilson_interval(correct, n)
            rows.append(dict(model=name, per_class=per_class, acc=correct / n,
                             low=float(low), high=float(high), sd=float(np.std(accs)),
                             dice=float(np.mean(dices)) if dices else float("nan"),
                             one_class=one_class, secs=time.perf_counter() - start))
            r = rows[-1]
            tqdm.write(f"{name:<11} {per_class:>4}/class  acc {r['acc']:.3f} "
                       f"[{r['low']:.3f}, {r['high']:.3f}]  sd {r['sd']:.3f}  "
                       f"dice {r['dice']:.3f}  ({r['secs']:.0f} s)")
    bar.close()
    chance = np.bincount(y_test).max() / len(y_test)  # always the most frequent class
    return rows, chance


def all_at_chance(rows, chance):
    """True when chance lies in every model's 95% interval at every size."""
    return all(r["low"] <= chance <= r["high"] for r in rows)


def print_table(rows, args, chance):
    print(f"\n{args.task} task, {args.image_size}px, {args.distractors} distractors, "
          f"{args.encoder} ({'ImageNet' if args.pretrained else 'from scratch'}), "
          f"{args.epochs} epochs, {args.seeds} seeds, {args.n_test} test images")
    print(f"{'n/class':>7}  {'model':<11}  {'accuracy':>8}  {'95% CI':<12}  {'sd':>5}  "
          f"{'Dice':>5}  {'one-class':>9}")
    for r in rows:
        dice = "-" if np.isnan(r["dice"]) else f"{r['dice']:.2f}"
        one_class = f"{r['one_class']}/{args.seeds}"
        print(f"{r['per_class']:>7}  {r['model']:<11}  {r['acc']:>8.3f}  "
              f"[{r['low']:.2f}, {r['high']:.2f}]  {r['sd']:>5.3f}  {dice:>5}  "
              f"{one_class:>9}")
    print(f"accuracy: over the pooled test predictions of all seeds, with its Wilson 95%\n"
          f"CI; sd: over seeds; Dice: of the predicted masks; one-class: seeds whose model\n"
          f"predicted one class for every test image. Chance level: {chance:.3f}.")
    if all_at_chance(rows, chance):
        print("Every model's 95% CI contains chance: with so few images and epochs no "
              "model\nlearned the task, so the curves (nearly) coincide. Use more "
              "--epochs and larger\n--sizes (the full run) to compare the models.")


def plot(rows, args, chance):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    same = all_at_chance(rows, chance)
    names = list(dict.fromkeys(r["model"] for r in rows))
    for m, marker, style in zip(names, "os^D", ("-", "--", ":", "-.")):
        rs = [r for r in rows if r["model"] == m]
        x = [r["per_class"] for r in rs]
        # distinct markers and line styles: equal results stay visible as three curves
        ax.plot(x, [r["acc"] for r in rs], marker=marker, linestyle=style, label=m,
                markerfacecolor="none" if same else None)
        ax.fill_between(x, [r["low"] for r in rs], [r["high"] for r in rs], alpha=0.2)
    ax.axhline(chance, color="0.5", linewidth=0.8, label="chance")
    if same:
        ax.text(0.5, 0.97, "every model at chance (95% CI):\ntoo few images and epochs "
                "to compare", transform=ax.transAxes, ha="center", va="top", fontsize=8)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(args.sizes, [str(s) for s in args.sizes])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy (Wilson 95% CI)")
    ax.set_title(f"UBC vs baseline, {args.task} task\n{args.encoder}, {args.epochs} "
                 f"epochs, {args.seeds} seeds, {args.n_test} test images", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot saved to {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="check that the script runs: --sizes 2 5 --seeds 2 --epochs 5 "
                         "--n-test 64 (every model stays at chance)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10, 20, 50],
                    help="training images per class, one point of the curve each")
    ap.add_argument("--seeds", type=int, default=5,
                    help="training sets drawn per size")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds first_seed .. first_seed + seeds - 1")
    ap.add_argument("--epochs", type=int, default=40, help="epochs per fit")
    ap.add_argument("--n-test", type=int, default=400, help="test images (one fixed set)")
    ap.add_argument("--n-pool", type=int, default=400,
                    help="images the training sets are drawn from")
    ap.add_argument("--image-size", type=int, default=64, help="image size in pixels")
    ap.add_argument("--task", default="presence", choices=["presence", "appearance"],
                    help="make_lesions task: what decides the class")
    ap.add_argument("--distractors", type=int, default=3,
                    help="look-alike distractors per image")
    ap.add_argument("--encoder", default="resnet18", help="U-Net encoder name")
    ap.add_argument("--pretrained", action="store_true",
                    help="ImageNet weights for the encoder (network or cache)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size")
    ap.add_argument("--device", default="auto",
                    help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    ap.add_argument("--deep-supervision", action="store_true",
                    help="also run ubc-mask with deep_supervision=True (ubc-mask-ds)")
    ap.add_argument("--models", nargs="+", default=None,
                    choices=[*MODELS, "ubc-mask-ds"],
                    help="run only these models (ubc-mask-ds needs --deep-supervision)")
    ap.add_argument("--out", default="ubc_small_sample.png", help="plot file")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.seeds, args.epochs, args.n_test = [2, 5], 2, 5, 64
    rows, chance = run(args)
    print_table(rows, args, chance)
    plot(rows, args, chance)


if __name__ == "__main__":
    main()
