"""DataLoaders of the skorch estimators (UBC, fine-tuning): one rule for both.

Training shuffles and drops a last batch of one sample (BatchNorm cannot train on it);
image paths are decoded by worker processes, which are stopped at once when an error
(a corrupt file, Ctrl-C) escapes.
"""

from __future__ import annotations

import torch


class StopWorkersOnError:
    """Iterates a DataLoader and stops its worker processes as soon as an error escapes.

    A corrupt file raises in a worker; left to the garbage collector, the failed
    iterator is finalised after its queues, and torch then waits out a 5 s join
    timeout per worker, in the middle of whatever the session does next.
    """

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        try:
            yield from it
        except BaseException:  # an error in a worker, KeyboardInterrupt, close()
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            raise


class WorkersForTheFirstEpoch:
    """Worker processes decode the first epoch; the main process serves the next ones.

    For a fit on image paths whose decoded images all fit the decode cache's memory
    bound: the first epoch's workers write every image to the cache's files, the second
    epoch reads them in the main process and keeps them in memory, and from then on an
    epoch costs what in-memory arrays cost (workers would only add inter-process copies
    and compete for the cores). The workers are stopped when the first epoch is done.
    """

    def __init__(self, loader, in_process):
        self.loader = loader
        self.in_process = in_process
        self.passes = 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.passes == 0:
            yield from StopWorkersOnError(self.loader)
        else:
            workers = getattr(self.loader, "_iterator", None)  # persistent workers
            if workers is not None:
                workers._shutdown_workers()
                self.loader._iterator = None
            yield from self.in_process
        self.passes += 1


def served_from_memory(ds, training):
    """Whether the decoded images of a training dataset ``ds`` (with ``images``, paths,
    and ``size``) all fit the decode cache's memory tier: then workers decode the first
    epoch only, and the main process serves the next ones (skorch estimators and
    ``SelfSupervisedPretrainer``)."""
    from ._decode_cache import DECODED

    images, size = getattr(ds, "images", None), getattr(ds, "size", None)
    if not training or images is None or images.kind != "paths" or size is None:
        return False
    return DECODED.folder() is not None and DECODED.fits_in_memory(len(images), size)


def unwrap_dataset(dataset):
    """The dataset under skorch's / sklearn's ``Subset`` wrappers."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


def skorch_image_iterator(net, dataset, training):
    """What ``NeuralNet.get_iterator`` returns for a dataset holding ``images``."""
    prefix = "iterator_train" if training else "iterator_valid"
    kwargs = net.get_params_for(prefix)
    bs = kwargs.setdefault("batch_size", net.batch_size)
    if bs == -1:
        bs = kwargs["batch_size"] = len(dataset)
    if training:
        kwargs.setdefault("shuffle", True)
        # BatchNorm cannot train on a last batch of one sample
        if len(dataset) > 1 and len(dataset) % bs == 1:
            kwargs.setdefault("drop_last", True)
    images = getattr(unwrap_dataset(dataset), "images", None)
    if "num_workers" not in kwargs and images is not None and images.kind == "paths":
        from ._images import loader_options

        for key, value in loader_options("paths", str(getattr(net, "device", "cpu")),
                                         training=training).items():
            kwargs.setdefault(key, value)
    iterator = net.iterator_train if training else net.iterator_valid
    loader = iterator(dataset, **kwargs)
    if getattr(loader, "num_workers", 0) and served_from_memory(unwrap_dataset(dataset),
                                                                 training):
        serial = {k: v for k, v in kwargs.items()
                  if k not in ("num_workers", "prefetch_factor", "persistent_workers")}
        return WorkersForTheFirstEpoch(loader, iterator(dataset, num_workers=0, **serial))
    if getattr(loader, "num_workers", 0):
        return StopWorkersOnError(loader)
    return loader
