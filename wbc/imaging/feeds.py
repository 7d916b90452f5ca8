"""Input pipelines: class folders -> batches of (scaled image, one-hot label) for Keras.

Two feeds:

- ``tfdata`` (default): every image is read ONCE with ``wbc.imaging.preprocess.load_resized`` (a
thread
  pool: Pillow and OpenCV release the GIL) into one in-memory uint8 array, then
  ``from_tensor_slices -> shuffle(seed) -> batch -> map(scale) -> prefetch``. With
  ``train.cache: false`` the files are streamed instead (the same loader inside
  ``tf.numpy_function``), for data sets that do not fit in memory.
- ``imagedatagenerator``: the study's ``ImageDataGenerator(rescale=1/255).flow_from_directory``,
  kept for comparison (it resizes with Pillow's nearest-neighbour, as the study did).

An unreadable image in a class folder is skipped with a warning naming it, never a crash.
Class order is the sorted class folder names of the training side; labels are one-hot float32,
matching the study's ``categorical_crossentropy``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from wbc.core.errors import BadImage, DataError
from wbc.core.imageio import decode_threads, is_image_name
from wbc.core.progress import no_echo
from wbc.imaging import color
from wbc.imaging.preprocess import InputSpec, load_resized

Echo = Callable[[str], None]


def class_folders(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold at least one image file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    names = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            if any(f.is_file() and is_image_name(f) for f in child.iterdir()):
                names.append(child.name)
    return names


def list_class_files(
    root: Path, classes: Optional[Sequence[str]] = None
) -> tuple[list[str], list[Path], np.ndarray]:
    """``(classes, files, labels)`` for ``root/CLASS/*.{jpg,png,...}``.

    ``classes`` None: the sorted class folders found. Otherwise a class folder that is not in
    ``classes`` is a ``DataError`` naming it (a model cannot score a class it never learnt).
    """
    root = Path(root)
    found = class_folders(root)
    if not found:
        raise DataError(f"{root}: no class folders with images (expected {root}/CLASS/*.jpg)")
    if classes is None:
        classes = found
    else:
        unknown = [name for name in found if name not in classes]
        if unknown:
            raise DataError(
                f"{root}: class folder(s) {', '.join(unknown)} unknown to the model "
                f"(it knows {', '.join(classes)})"
            )
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and is_image_name(path):
                files.append(path)
                labels.append(index)
    return list(classes), files, np.asarray(labels, dtype=np.int32)


def load_images(
    paths: Sequence[Path],
    image_size: tuple[int, int],
    workers: int = 0,
    echo: Echo = no_echo,
    spec: Optional[InputSpec] = None,
) -> tuple[np.ndarray, np.ndarray, list[BadImage]]:
    """Read ``paths`` into one ``(n_ok, H, W, 3)`` uint8 array with a thread pool.

    ``spec``: also apply its colour steps (``color.input``, ``color.normalize``).
    Returns ``(images, kept, bad)``: ``kept`` are the indices into ``paths`` of the rows of
    ``images`` (in order); each unreadable file is a ``BadImage`` in ``bad`` and a warning line.
    """
    height, width = image_size
    images = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    bad: list[BadImage] = []

    def load(index: int):
        try:
            images[index] = load_resized(paths[index], image_size, spec)
            ok[index] = True
        except BadImage as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=workers or decode_threads(16, per_core=2)) as pool:
        for error in pool.map(load, range(len(paths))):
            if error is not None:
                bad.append(error)
                echo(f"warning: skipping unreadable image {error}")
    kept = np.flatnonzero(ok)
    if len(kept) < len(paths):  # compact in place: no second copy of a 620 MB array
        for row, index in enumerate(kept):
            if row != index:
                images[row] = images[index]
        images = images[: len(kept)]
    return images, kept, bad


@dataclass
class Feed:
    """A Keras-ready input: ``data`` for ``fit``/``evaluate`` and what it holds."""

    data: object  # tf.data.Dataset or a Keras PyDataset (DirectoryIterator)
    classes: list[str]
    n_images: int
    class_counts: list[int]
    steps_per_epoch: Optional[int] = None  # None = one pass over the data
    bad: list[BadImage] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _steps(steps_per_epoch) -> Optional[int]:
    """'auto' (or None) = one pass over the data, else that many batches per epoch."""
    if steps_per_epoch in (None, "auto"):
        return None
    return int(steps_per_epoch)


def make_feed(
    folder: Path,
    image_size: tuple[int, int],
    batch_size: int,
    seed: int,
    classes: Optional[Sequence[str]] = None,
    training: bool = True,
    cache: bool = True,
    steps_per_epoch="auto",
    feed: str = "tfdata",
    workers: int = 0,
    echo: Echo = no_echo,
    spec: Optional[InputSpec] = None,
    jitter=None,
    flips: bool = False,
    rotations: bool = False,
    mixup: float = 0.0,
) -> Feed:
    """The input pipeline for one side (``train`` or ``test``) of a prepared subset.

    ``training`` shuffles (with ``seed``); ``steps_per_epoch`` an int repeats the data so that an
    epoch can be longer than one pass ('auto' = one pass). ``spec``: the colour steps of
    ``color.input`` / ``color.normalize`` (every image, both sides). ``jitter``: a
    ``ColorConfig`` whose brightness/contrast/saturation/hue jitter the batches, with ``training``
    only (``wbc.imaging.color.add_jitter``, tfdata feed; seeded, fresh every epoch). ``flips``: with
    ``training``, each image flipped left-right and up-down at random (``add_random_flips``).
    ``rotations``: with ``training``, each (square) image turned by a random multiple of 90
    degrees (``add_random_rotations``). ``mixup``: with ``training``, mixup with this alpha.
    """
    classes, files, labels = list_class_files(folder, classes)
    if not files:
        raise DataError(f"{folder}: no images in the class folders")
    if feed == "imagedatagenerator":
        return _idg_feed(
            folder,
            classes,
            files,
            labels,
            image_size,
            batch_size,
            seed,
            training,
            steps_per_epoch,
            workers,
            echo,
            spec,
            flips=training and flips,
        )
    if feed != "tfdata":
        raise DataError(f"train.feed: unknown feed '{feed}'")
    import tensorflow as tf

    n_classes = len(classes)
    steps = _steps(steps_per_epoch) if training else None

    def one_hot(images, label):
        return images, tf.one_hot(label, n_classes, dtype=tf.float32)

    bad: list[BadImage] = []
    if cache:
        images, kept, bad = load_images(files, image_size, workers, echo, spec)
        files = [files[i] for i in kept]
        labels = labels[kept]
        if not len(files):
            raise DataError(f"{folder}: none of the images could be read")
        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        dataset = _stream(files, labels, image_size, echo, spec)
    if training:
        dataset = dataset.shuffle(
            len(files) if cache else min(len(files), 4096),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    if steps is not None:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size)
    from wbc.imaging.preprocess import scale

    dataset = dataset.map(
        lambda images, label: one_hot(scale(images), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if training and jitter is not None:
        dataset = color.add_jitter(dataset, jitter, seed)
    if training and flips:
        dataset = add_random_flips(dataset, seed)
    if training and rotations:
        dataset = add_random_rotations(dataset, seed)
    if training and mixup > 0:
        dataset = add_mixup(dataset, seed, mixup)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    counts = np.bincount(labels, minlength=n_classes).tolist()
    return Feed(dataset, list(classes), len(files), counts, steps, bad, list(files))


def add_random_flips(dataset, seed: int):
    """``dataset`` of batches ``(images, labels)`` with each image flipped left-right and
    up-down, each with probability 1/2, fresh every epoch and the same for the same ``seed``.

    Why: a cell seen from above is the same cell mirrored, so flips are free, label-safe extra
    data; they matter where the training images are not augmented offline (``wbc cv --data``
    fine-tuning on another lab's few dozen images).
    """
    import tensorflow as tf

    from wbc.core.seeding import derived_seed

    seeds = tf.data.Dataset.random(
        seed=derived_seed(seed, "random_flips") % 2**31, rerandomize_each_iteration=True
    ).batch(2)

    def flip(images, pair):
        horizontal, vertical = tf.unstack(
            tf.random.experimental.stateless_split(tf.cast(pair, tf.int64), 2)
        )
        shape = tf.stack([tf.shape(images)[0], 1, 1, 1])
        images = tf.where(
            tf.random.stateless_uniform(shape, horizontal) < 0.5,
            tf.reverse(images, axis=[2]),
            images,
        )
        return tf.where(
            tf.random.stateless_uniform(shape, vertical) < 0.5, tf.reverse(images, axis=[1]), images
        )

    pairs = tf.data.Dataset.zip((dataset, seeds))
    return pairs.map(
        lambda batch, pair: (flip(batch[0], pair), *batch[1:]), num_parallel_calls=tf.data.AUTOTUNE
    )


def _batch_seeds(seed: int, name: str, per_batch: int = 2):
    import tensorflow as tf

    from wbc.core.seeding import derived_seed

    return tf.data.Dataset.random(
        seed=derived_seed(seed, name) % 2**31, rerandomize_each_iteration=True
    ).batch(per_batch)


def add_random_rotations(dataset, seed: int):
    """``dataset`` of batches of square images, each turned by 0, 90, 180 or 270 degrees at
    random, fresh every epoch and the same for the same ``seed``. With ``add_random_flips``
    this draws from all 8 dihedral views: a cell on a slide has no "up"."""
    import tensorflow as tf

    def turn(images, pair):
        quarter = tf.random.stateless_uniform(
            tf.shape(images)[:1], tf.cast(pair, tf.int64), maxval=4, dtype=tf.int32
        )
        turned = images
        for k in (1, 2, 3):
            rotated = tf.image.rot90(images, k)
            turned = tf.where(tf.reshape(quarter == k, [-1, 1, 1, 1]), rotated, turned)
        return turned

    pairs = tf.data.Dataset.zip((dataset, _batch_seeds(seed, "random_rotations")))
    return pairs.map(
        lambda batch, pair: (turn(batch[0], pair), *batch[1:]), num_parallel_calls=tf.data.AUTOTUNE
    )


def add_mixup(dataset, seed: int, alpha: float):
    """mixup (Zhang et al. 2018): each batch blended with itself in another order, images and
    one-hot labels alike, with one weight per image drawn from Beta(alpha, alpha)."""
    import tensorflow as tf

    def mix(images, labels, pair):
        seeds = tf.random.experimental.stateless_split(tf.cast(pair, tf.int64), 3)
        n = tf.shape(images)[0]
        gamma_a = tf.random.stateless_gamma([n], seeds[0], alpha)
        gamma_b = tf.random.stateless_gamma([n], seeds[1], alpha)
        weight = gamma_a / (gamma_a + gamma_b)
        order = tf.argsort(tf.random.stateless_uniform([n], seeds[2]))
        w_img = tf.reshape(weight, [-1, 1, 1, 1])
        w_lab = tf.reshape(weight, [-1, 1])
        return (
            w_img * images + (1 - w_img) * tf.gather(images, order),
            w_lab * labels + (1 - w_lab) * tf.gather(labels, order),
        )

    pairs = tf.data.Dataset.zip((dataset, _batch_seeds(seed, "mixup")))
    return pairs.map(
        lambda batch, pair: mix(batch[0], batch[1], pair), num_parallel_calls=tf.data.AUTOTUNE
    )


def _stream(
    files: list[Path],
    labels: np.ndarray,
    image_size: tuple[int, int],
    echo: Echo,
    spec: Optional[InputSpec] = None,
):
    """A dataset that reads each file when it is needed (``train.cache: false``)."""
    import tensorflow as tf

    height, width = image_size
    warned: set[str] = set()
    lock = threading.Lock()

    def load(path_bytes):
        path = Path(path_bytes.decode("utf-8"))
        try:
            return load_resized(path, image_size, spec), True
        except BadImage as exc:
            with lock:
                if str(path) not in warned:
                    warned.add(str(path))
                    echo(f"\nwarning: skipping unreadable image {exc}")
            return np.zeros((height, width, 3), np.uint8), False

    def read(path, label):
        image, ok = tf.numpy_function(load, [path], [tf.uint8, tf.bool])
        image.set_shape((height, width, 3))
        ok.set_shape(())
        return image, label, ok

    dataset = tf.data.Dataset.from_tensor_slices(([str(f) for f in files], labels))
    dataset = dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(lambda image, label, ok: ok)
    return dataset.map(lambda image, label, ok: (image, label))


def _idg_feed(
    folder,
    classes,
    files,
    labels,
    image_size,
    batch_size,
    seed,
    training,
    steps_per_epoch,
    workers,
    echo,
    spec=None,
    flips: bool = False,
) -> Feed:
    """The study's ``ImageDataGenerator(rescale=1/255).flow_from_directory`` feed."""
    import tensorflow as tf

    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator  # Keras 3: legacy API

    # flow_from_directory would crash on an unreadable file: check them first, skip the bad ones.
    _, kept, bad = load_images(files, (8, 8), workers, echo)
    recolor = None
    if spec is not None and spec.recolors:  # colour steps on the resized image, before rescale
        from wbc.imaging.preprocess import recolor as apply

        def recolor(x):
            return apply(np.clip(x, 0, 255).astype(np.uint8), spec).astype(x.dtype)

    generator = ImageDataGenerator(
        rescale=1.0 / 255,
        preprocessing_function=recolor,
        horizontal_flip=flips,
        vertical_flip=flips,
    )
    common = dict(
        target_size=tuple(image_size),
        batch_size=batch_size,
        class_mode="categorical",
        classes=list(classes),
        shuffle=training,
        seed=seed,
    )
    if not bad:
        flow = generator.flow_from_directory(str(folder), **common)
    else:
        import pandas as pd

        good = [files[i] for i in kept]
        frame = pd.DataFrame(
            {"filename": [str(p) for p in good], "class": [classes[labels[i]] for i in kept]}
        )
        common.pop("classes")
        flow = generator.flow_from_dataframe(
            frame, x_col="filename", y_col="class", classes=list(classes), **common
        )
    counts = np.bincount(labels[kept], minlength=len(classes)).tolist()
    steps = _steps(steps_per_epoch) if training else None
    data = flow if steps is None else _repeating(flow, steps)
    return Feed(data, list(classes), int(len(kept)), counts, steps, bad, [files[i] for i in kept])


def _repeating(flow, steps: int):
    """``flow`` served as epochs of ``steps`` batches, cycling through (and reshuffling) it.

    Keras 3 ends an epoch when a PyDataset runs out, so an epoch longer than one pass needs this.
    """
    import keras

    class Repeating(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.served = 0

        def __len__(self):
            return steps

        def __getitem__(self, index):
            position = self.served % len(flow)
            if position == 0 and self.served:
                flow.on_epoch_end()  # a new pass: reshuffle as flow_from_directory does
            self.served += 1
            return flow[position]

    return Repeating()


def run_reference(
    config,
    train_dir: Path,
    run_dir: Path,
    *,
    reuse: bool = False,
    echo: Callable[[str], None] = lambda _m: None,
) -> Optional[color.StainReference]:
    """The stain reference of a training run (None unless ``color.normalize`` maps to one).

    Computed from the training images (seeded sample, resized as the model sees them) and
    written to ``run_dir/stain_reference.json``; ``reuse`` (a resumed run) reads the one
    already there, so a run keeps its reference.
    """
    method = config.color.normalize
    if method not in color.MAPPED:  # none, or balance: each image against its own background
        return None
    run_dir = Path(run_dir)
    if reuse and (run_dir / color.REFERENCE_NAME).is_file():
        return color.read_reference(run_dir, method)
    _, files, _ = list_class_files(Path(train_dir))
    size = tuple(config.train.image_size)
    reference = color.training_reference(
        method, files, lambda path: load_resized(path, size), config.seed, echo
    )
    color.write_reference(reference, run_dir)
    return reference
