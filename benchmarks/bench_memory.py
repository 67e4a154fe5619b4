"""Peak memory of feature extraction: bounded by the batch and the store, not by N.

Each case runs in a fresh subprocess. The child builds its inputs and the encoder
(``vit_small_patch16_224``, ``pretrained=False``, 224 px, CPU), records its resident
memory, resets the kernel's high-water mark (``/proc/self/clear_refs``; where that is
not available it falls back to ``resource.getrusage().ru_maxrss``, which can only
under-report), runs ``fit_transform`` and reports the peak resident memory above that
baseline. The inputs themselves (an (N, 224, 224, 3) uint8 array is 150 KB per image)
are part of the baseline, the returned (N, 384) array is part of the increase.

Cases: synthetic uint8 arrays of N = 64, 512, 2048 images with the default in-memory
store, 512 without a store and 512 into a store directory; and 2,000 64-px PNG files
given as paths into a store directory with the in-memory LRU capped at 8 MB
(``SKLEARN_ENDO_STORE_BYTES``). Target: <= +0.3 GB at 512 images, flat in N.

``--device cuda`` runs the encoder on the GPU (AMP on, the transformer's default there)
and also reports ``torch.cuda.max_memory_allocated`` during ``transform`` (reset after
the baseline; the encoder's weights are part of it) and images/s with the device
synchronised; on the CPU, AMP is off.

Run: ``python benchmarks/bench_memory.py [--sizes 64 512 2048] [--paths 2000]
[--device cuda]``
(about 2-5 images/s on 2 busy CPU cores; ``--quick`` runs 16/64 images and
100 paths; ``--extra`` adds the middle size without a store and into a directory).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

from _device import add_device_argument, check_device, describe

CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    import numpy as np
    import torch
    from sklearn_endo import LayerFeatureTransformer

    kind, n, store, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    device = sys.argv[5]
    cuda = device.startswith("cuda")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))

    def rss_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def hwm_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    if kind == "array":
        X = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    else:
        X = sorted(os.path.join(workdir, f) for f in os.listdir(workdir))[:n]
    feature_store = {"none": None, "memory": "memory"}.get(store, store)
    t = LayerFeatureTransformer("vit_small_patch16_224", layer=-1, pretrained=False,
                                feature_store=feature_store, batch_size=32, verbose=False,
                                device=device)
    t.fit(X[:1])
    t.encoder_  # weights loaded before the baseline
    base = rss_kb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
        base = max(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = t.transform(X)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    peak = hwm_kb() if method == "VmHWM" else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"increase_mb": (peak - base) / 1024, "base_mb": base / 1024,
                      "seconds": seconds, "shape": list(out.shape), "method": method,
                      "worker_peak_mb": kids / 1024, "cuda_peak_mb": cuda_peak}))
""")


def run_case(kind, n, store, workdir, device, store_bytes=None):
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if store_bytes is not None:
        env["SKLEARN_ENDO_STORE_BYTES"] = str(store_bytes)
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), store, workdir, device],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"case {kind} {n} {store} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_pngs(folder, n, size=64):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"img{i:05d}.png"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 2048])
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--extra", action="store_true",
                    help="also the middle size without a store and into a directory")
    add_device_argument(ap)
    args = ap.parse_args()
    device = str(check_device(ap, args.device))
    sizes, n_paths = ([16, 64], 100) if args.quick else (args.sizes, args.paths)
    mid = sizes[len(sizes) // 2] if len(sizes) > 1 else sizes[0]

    print(f"vit_small_patch16_224, pretrained=False, 224 px, batch 32, "
          f"{os.environ.get('OMP_NUM_THREADS', '2')} CPU threads; "
          f"{describe(device, extraction=False)}")
    cuda = device.startswith("cuda")
    print("AMP on (the transformer's default on CUDA)" if cuda else "AMP off (CPU)")
    print(f"{'input':<8}{'N':>6}  {'store':<26}{'peak RSS increase':>18}{'img/s':>8}"
          f"{'workers':>10}" + (f"{'CUDA peak':>12}" if cuda else ""), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        pngs = os.path.join(tmp, "pngs")
        os.makedirs(pngs)
        cases = [("array", n, "memory", None) for n in sizes]
        if args.extra:
            cases += [("array", mid, "none", None),
                      ("array", mid, os.path.join(tmp, "store_a"), None)]
        cases.append(("paths", n_paths, os.path.join(tmp, "store_p"), 8 * 1024**2))
        for kind, n, store, cap in cases:
            if kind == "paths" and not os.listdir(pngs):
                write_pngs(pngs, n)
            res = run_case(kind, n, store, pngs, device, cap)
            label = store if store in ("memory", "none") else "directory"
            if cap is not None:
                label += f", LRU {cap // 1024**2} MB"
            workers = f"{res['worker_peak_mb']:.0f} MB" if kind == "paths" else "-"
            gpu = f"{res['cuda_peak_mb']:>8.0f} MiB" if cuda else ""
            print(f"{kind:<8}{n:>6}  {label:<26}{res['increase_mb']:>15.0f} MB"
                  f"{n / res['seconds']:>8.1f}{workers:>10}{gpu}", flush=True)
    print(f"(peak of the main process measured with {res['method']}; workers: peak of "
          f"the DataLoader worker processes; target <= +300 MB at 512 images, flat in N)")


if __name__ == "__main__":
    main()
