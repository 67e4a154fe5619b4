"""The SSL study's protocol: pretrain once, fine-tune for classification and segmentation.

An encoder is pretrained with :class:`~sklearn_endo.ssl.SelfSupervisedPretrainer` on
unlabelled ``make_lesions`` images, saved with ``save_encoder``, and the same file then
initialises

* a :class:`~sklearn_endo.FineTuneClassifier` (lesion pattern, 5 classes), scored by
  accuracy with a Wilson 95% interval, and
* a :class:`~sklearn_endo.segmentation.Segmenter` (U-Net, lesion masks), scored by the
  mean Dice with a stratified bootstrap 95% interval,

each against the same architecture at random initialisation and, with ``--imagenet``
and the weights in the local cache, at ImageNet initialisation. The labelled sets are
drawn independently of the unlabelled one; the test set is never used for a choice.

Runs offline on CPU. ``--quick`` (128 unlabelled images, 2 SSL epochs, 3 fine-tuning
epochs, 100 labelled and 100 test images) only checks that the script runs: so little
training is too little to compare the initialisations. The default run is larger
(see ``--help``) and wants a GPU or patience.

    python examples/ssl_downstream.py --quick
    python examples/ssl_downstream.py --encoder resnet18 --imagenet --device cuda
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from sklearn_endo import FineTuneClassifier, WeightsUnavailableError
from sklearn_endo.datasets import make_lesions
from sklearn_endo.metrics import accuracy_ci, dice_ci
from sklearn_endo.segmentation import Segmenter
from sklearn_endo.ssl import SelfSupervisedPretrainer

LESION = (0.3, 0.5)  # lesion diameter, fraction of the image


def pretrain(args, path):
    X_unl, _ = make_lesions(args.n_unlabelled, n_classes=5, image_size=args.size,
                            lesion_size=LESION, random_state=1)
    start = time.perf_counter()
    pre = SelfSupervisedPretrainer(args.encoder, method=args.method, img_size=args.size,
                                   max_epochs=args.ssl_epochs, batch_size=64,
                                   device=args.device, random_state=0,
                                   verbose=False).fit(X_unl)
    pre.save_encoder(path)
    print(f"pretrained {args.encoder} with {args.method} on {args.n_unlabelled} unlabelled "
          f"images, {args.ssl_epochs} epochs ({time.perf_counter() - start:.0f} s)")


def inits(args, path):
    """name -> keyword arguments of the encoder's initialisation."""
    out = {"random": dict(pretrained=False), "ssl": dict(pretrained=False,
                                                         checkpoint_path=path)}
    if args.imagenet:
        out["imagenet"] = dict(pretrained=True)
    return out


def classification(args, init, data):
    X, y, X_test, y_test = data
    clf = FineTuneClassifier(args.encoder, img_size=args.size, max_epochs=args.epochs,
                             lr=args.lr_cls, batch_size=16, device=args.device,
                             random_state=0, verbose=0, **init).fit(X, y)
    return accuracy_ci(y_test, clf.predict(X_test))


def segmentation(args, init, data):
    X, masks, X_test, m_test = data
    seg = Segmenter("tu-" + args.encoder, image_size=args.size, max_epochs=args.epochs,
                    lr=args.lr_seg, batch_size=8, device=args.device, random_state=0,
                    verbose=0, **init).fit(X, masks)
    return dice_ci(m_test, seg.predict(X_test), random_state=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="check that the script runs (128 unlabelled images, 2 SSL "
                         "epochs, 3 fine-tuning epochs, 100 + 100 labelled images)")
    ap.add_argument("--encoder", default="test_resnet",
                    help="a timm CNN name (test_resnet: timm's tiny test model)")
    ap.add_argument("--method", default="barlowtwins",
                    help="SelfSupervisedPretrainer method (barlowtwins, mocov3, dino, mae)")
    ap.add_argument("--size", type=int, default=32, help="image size in pixels")
    ap.add_argument("--n-unlabelled", type=int, default=1024,
                    help="unlabelled images for pretraining")
    ap.add_argument("--ssl-epochs", type=int, default=10, help="pretraining epochs")
    ap.add_argument("--n-train", type=int, default=300,
                    help="labelled images for fine-tuning")
    ap.add_argument("--n-test", type=int, default=500, help="labelled test images")
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    ap.add_argument("--lr-cls", type=float, default=1e-3,
                    help="FineTuneClassifier learning rate")
    ap.add_argument("--lr-seg", type=float, default=3e-3, help="Segmenter learning rate")
    ap.add_argument("--imagenet", action="store_true",
                    help="also start from ImageNet weights (skipped when not cached)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    args = ap.parse_args()
    if args.quick:
        args.n_unlabelled, args.ssl_epochs, args.epochs = 128, 2, 3
        args.n_train, args.n_test = 100, 100

    X, y, masks = make_lesions(args.n_train + args.n_test, n_classes=5,
                               image_size=args.size, lesion_size=LESION,
                               return_masks=True, random_state=2)
    n = args.n_train
    cls_data = (X[:n], y[:n], X[n:], y[n:])
    seg_data = (X[:n], masks[:n], X[n:], masks[n:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "encoder.safetensors")
        pretrain(args, path)
        for name, init in inits(args, path).items():
            start = time.perf_counter()
            try:
                acc = classification(args, init, cls_data)
                dice = segmentation(args, init, seg_data)
            except WeightsUnavailableError as exc:
                print(f"{name}: skipped ({str(exc).split(' Ways out')[0]})")
                continue
            rows.append((name, acc, dice, time.perf_counter() - start))
    print(f"\n{args.encoder}, {args.size} px, {args.n_train} labelled / {args.n_test} test "
          f"images, {args.epochs} fine-tuning epochs")
    print(f"{'init':<9} {'accuracy [95% CI]':<24} {'Dice [95% CI]':<24} seconds")
    for name, acc, dice, secs in rows:
        print(f"{name:<9} {acc.accuracy:.3f} [{acc.low:.3f}, {acc.high:.3f}]    "
              f"{dice.score:.3f} [{dice.low:.3f}, {dice.high:.3f}]    {secs:.0f}")
    print("accuracy: Wilson interval over test images; Dice: mean per image, stratified "
          "bootstrap.")
    if args.quick:
        print("--quick only checks that the script runs: 2 SSL epochs on 128 images and "
              "3 fine-tuning epochs are too few to compare the initialisations.")


if __name__ == "__main__":
    main()
