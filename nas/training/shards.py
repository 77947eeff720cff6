"""WebDataset tar shards as a data source (``DataConfig.name='webdataset'``).

A shard is a tar file of samples, each ``<key>.jpg`` (or ``.jpeg``/``.png``/``.webp``: the
image file as it was encoded) beside ``<key>.cls`` (the class index as decimal text), the
layout ImageNet-scale training streams from object storage (``../shared/datasets/tiny-imagenet``
is one). Shards are read with the ``webdataset`` library (the ``data`` extra): its
``WebDataset`` pipeline opens, splits and groups them, ``.decode`` turns the JPEG bytes into
RGB (grayscale images included) and the ``.cls`` text into an integer.

Two ways to feed them, chosen by :attr:`DataConfig.stream`:

* decoded once (the default, for sets that fit in memory): both splits are decoded into the
  uint8 tensor cache of :mod:`nas.training.tensor_data` and fed exactly as CIFAR-10 is. The
  cache is keyed by every shard's path, size and modification time (a URL by its text) and
  the class list;
* streamed (``stream: true``): :mod:`nas.training.shard_stream`.

Every bad input ends in one :class:`DataError` line naming the shard and, where there is
one, the sample key: a missing shard, a pattern no shard matches, a truncated or corrupt tar,
a sample without its image or ``.cls``, an undecodable image, a label outside the class
list, images of mixed sizes in a cached set. Decoding finishes before the cache is written,
so a failure leaves nothing in it.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from nas._io import default_cache_dir
from nas.training.data_config import DataConfig, DataError
from nas.training.tensor_data import CACHE_FORMAT, TensorSplit, cached_splits

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEY = "cls"
GLOB_CHARACTERS = "*?["


def _webdataset() -> Any:
    try:
        import webdataset as wds
    except ImportError:
        raise DataError("DataConfig.name='webdataset' needs the webdataset package: "
                        "pip install 'mnv3-nas[data]'") from None
    return wds


def is_url(text: str) -> bool:
    """A remote shard (read by the library's ``gopen``: ``https://``, ``s3://``, ``pipe:``)."""
    return text.startswith("pipe:") or ("://" in text and not text.startswith("file://"))


# ---------------------------------------------------------------------------- shard lists
def resolve_shards(spec: str | Sequence[str] | None, root: str | None, split: str) -> list[str]:
    """The shard list of one split: patterns expanded, local shards checked to exist.

    ``spec`` is a pattern, a URL or a list of them (None: ``<split>/*.tar``); a relative
    local pattern is relative to ``root``. Brace ranges expand as the library expands them;
    a glob expands in sorted order and must match at least one shard.
    """
    wds = _webdataset()
    entries = [f"{split}/*.tar"] if spec is None else ([spec] if isinstance(spec, str) else list(spec))
    shards: list[str] = []
    for entry in entries:
        if is_url(entry):
            shards += wds.shardlists.expand_urls(entry)
            continue
        entry = entry.removeprefix("file://")
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = Path(root or ".") / path
        for pattern in wds.shardlists.expand_urls(str(path)):
            if any(c in pattern for c in GLOB_CHARACTERS):
                matched = sorted(glob.glob(pattern))
                if not matched:
                    raise DataError(f"{pattern}: no {split} shard matches this pattern (empty glob)")
                shards += matched
            elif not Path(pattern).is_file():
                raise DataError(f"{pattern}: missing {split} shard (no such file)")
            else:
                shards.append(pattern)
    for shard in shards:
        if not is_url(shard):
            check_tar_end(shard)
    if not shards:
        raise DataError(f"DataConfig.{split}_shards={spec!r}: no shards")
    return shards


def check_tar_end(path: str) -> None:
    """Refuse a local tar cut short: Python's ``tarfile`` reads a stream cut inside a header as
    a normal end, so the shard would silently lose its last samples. A whole tar is a whole
    number of 512-byte blocks ending in the two zero blocks of the end-of-archive marker."""
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 1024))
        tail = handle.read()
    if size % 512 or size < 1024 or tail.count(0) != len(tail):
        why = (f"{size} bytes is not a whole number of 512-byte blocks" if size % 512
               else "no end-of-archive marker")
        raise DataError(f"{path}: truncated tar ({why}); copy or write the shard again")


def read_classes(cfg: DataConfig) -> tuple[str, ...]:
    """The class names: ``class_list``'s second column in index order, else the indices."""
    if cfg.class_list is None:
        return tuple(str(i) for i in range(cfg.num_classes or 0))
    path = Path(cfg.class_list).expanduser()
    if not path.is_absolute():
        path = Path(cfg.root or ".") / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class list ({err})") from None
    names: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[0].strip() != str(len(names)) or not fields[1].strip():
            raise DataError(f"{path}:{number}: expected '{len(names)}<TAB>name[<TAB>words]' "
                            f"(classes in index order), got {line[:80]!r}")
        names.append(fields[1].strip())
    if len(names) < 2:
        raise DataError(f"{path}: a class list needs at least 2 classes, found {len(names)}")
    if cfg.num_classes is not None and cfg.num_classes != len(names):
        raise DataError(f"{path} lists {len(names)} classes but DataConfig.num_classes is "
                        f"{cfg.num_classes}")
    return tuple(names)


def shard_fingerprint(shards: dict[str, list[str]], classes: Sequence[str]) -> str:
    """A hash of every shard's path, size and modification time (a URL: its text) and of
    the classes: a changed, added or removed shard, or another class list, is another key."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT}|webdataset|{'|'.join(classes)}".encode())
    for split, urls in shards.items():
        for url in urls:
            if is_url(url):
                digest.update(f"{split}|{url}\n".encode())
            else:
                stat = Path(url).stat()
                digest.update(f"{split}|{Path(url).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------------- reading
class ShardReader:
    """Builds the ``WebDataset`` pipelines of one shard set, every failure named.

    The pipeline stages run one sample at a time in one process (or one loader worker), so
    the key the checking stage saw last is the sample that a decode error, or a tar that
    breaks off, is about.
    """

    def __init__(self, num_classes: int, resize: int | None = None) -> None:
        self.num_classes = num_classes
        self.resize = resize  # streamed images are brought to one size as they are decoded
        self._shard: str | None = None
        self._key: str | None = None
        self._urls: set[str] = set()

    def pipeline(self, urls: Sequence[str], *, split_nodes: bool, shuffle_seed: int | None,
                 buffer: int = 0, with_key: bool = False) -> Any:
        """``(image uint8 (3, H, W), label[, key, shard])`` samples of ``urls`` in order.

        ``split_nodes``: each data-parallel rank reads its share of the shards
        (``wds.split_by_node``); loader workers always split the rank's shards among
        themselves (``wds.split_by_worker``). ``shuffle_seed``: shuffle samples in a buffer
        of ``buffer`` decoded images with this seed.
        """
        wds = _webdataset()
        self._urls = set(urls)
        # shardshuffle=False: the caller orders the shards (seeded by epoch) *before* the node
        # split, so every rank permutes alike and the ranks' shares stay disjoint; the
        # library's own shard shuffle runs after the split from a per-process counter that a
        # resumed run could not restore.
        dataset = wds.WebDataset(list(urls), shardshuffle=False, handler=self._read_failed,
                                 nodesplitter=wds.split_by_node if split_nodes else None,
                                 workersplitter=wds.split_by_worker, empty_check=False)
        dataset = (dataset.map(self._check, handler=_reraise)
                   .decode("torchrgb8", handler=self._decode_failed)
                   .map(self._label, handler=_reraise))
        if shuffle_seed is not None and buffer > 1:
            dataset = dataset.shuffle(buffer, initial=buffer, seed=shuffle_seed)
        fields: tuple[str, ...] = (";".join(IMAGE_KEYS), LABEL_KEY)
        return dataset.to_tuple(*fields, *(("__key__", "__url__") if with_key else ()))

    def count_samples(self, urls: Sequence[str]) -> list[int]:
        """Samples in each shard: one pass that groups and checks them without decoding."""
        wds = _webdataset()
        self._urls = set(urls)
        counts = []
        for url in urls:
            dataset = wds.WebDataset([url], shardshuffle=False, handler=self._read_failed,
                                     nodesplitter=None, workersplitter=None, empty_check=False)
            counts.append(sum(1 for _ in dataset.map(self._check, handler=_reraise)))
        return counts

    def _where(self, shard: str | None = None) -> str:
        return shard or self._shard or "a shard"

    def _check(self, sample: dict[str, Any]) -> dict[str, Any]:
        self._shard, self._key = sample.get("__url__"), sample.get("__key__")
        has_image = any(k in sample for k in IMAGE_KEYS)
        if not has_image or LABEL_KEY not in sample:
            missing = f".{LABEL_KEY}" if has_image else f"image (.{', .'.join(IMAGE_KEYS)})"
            present = sorted(k for k in sample if not k.startswith("__"))
            raise DataError(f"{self._where()}: sample {self._key!r} has no {missing} "
                            f"(it holds {present})")
        return sample

    def _label(self, sample: dict[str, Any]) -> dict[str, Any]:
        label = sample[LABEL_KEY]
        if not isinstance(label, int) or not 0 <= label < self.num_classes:
            raise DataError(f"{self._where()}: sample {self._key!r} has label {label!r}, outside "
                            f"the {self.num_classes} classes (0..{self.num_classes - 1})")
        image = next(sample[k] for k in IMAGE_KEYS if k in sample)
        if self.resize is not None and tuple(image.shape[-2:]) != (self.resize, self.resize):
            resized = torch.nn.functional.interpolate(
                image[None].float(), size=(self.resize, self.resize), mode="bilinear",
                antialias=True, align_corners=False)
            sample[next(k for k in IMAGE_KEYS if k in sample)] = resized[0].round().clamp(0, 255).byte()
        return sample

    def _decode_failed(self, err: BaseException) -> bool:
        raise DataError(f"{self._where()}: sample {self._key!r} cannot be decoded "
                        f"({_first_line(err)})") from None

    def _read_failed(self, err: BaseException) -> bool:
        """The library's handler for opening and reading shards; it is called twice for a
        tar that breaks off: first where the member is read (no URL known yet: re-raised,
        so the library adds the URL), then where the shard was opened."""
        args = getattr(err, "args", ())
        url = next((a for a in reversed(args) if isinstance(a, str) and a in self._urls), None)
        if url is None and args and " @ " in str(args[0]):
            raise err
        if isinstance(err, FileNotFoundError):
            raise DataError(f"{err.filename or self._where()}: missing shard (no such file)") from None
        if url is None:
            raise DataError(f"{self._where()}: cannot read the shard ({_first_line(err)})") from None
        after = f"after sample {self._key!r}" if url == self._shard else "before its first sample"
        raise DataError(f"{url}: unreadable tar, truncated or corrupt {after} "
                        f"({_first_line(err)})") from None


def _reraise(err: BaseException) -> bool:
    raise err


def _first_line(err: BaseException) -> str:
    text = str(err.args[0]) if getattr(err, "args", None) else str(err)
    return (text.splitlines() or [type(err).__name__])[0].split(" @ ")[0] or type(err).__name__


def decode_split(reader: ShardReader, urls: Sequence[str], classes: tuple[str, ...]) -> TensorSplit:
    """Every sample of ``urls`` in shard order, decoded into one uint8 tensor."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    first: tuple[str, str] | None = None
    for image, label, key, shard in reader.pipeline(urls, split_nodes=False, shuffle_seed=None,
                                                     with_key=True):
        if first is None:
            first = (shard, key)
        elif image.shape != images[0].shape:
            h, w = image.shape[-2:]
            h0, w0 = images[0].shape[-2:]
            raise DataError(f"{shard}: sample {key!r} is {w}x{h} but sample {first[1]!r} of "
                            f"{first[0]} is {w0}x{h0}; the tensor cache needs one image size "
                            "(stream=true resizes to the resolution)")
        images.append(image)
        labels.append(label)
    if not images:
        raise DataError(f"{urls[0]}{' ...' if len(urls) > 1 else ''}: the shards hold no samples")
    return TensorSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64), classes)


def shard_lists(cfg: DataConfig) -> dict[str, list[str]]:
    """``{"train": shards, "val": shards}`` of ``cfg``."""
    return {"train": resolve_shards(cfg.train_shards, cfg.root, "train"),
            "val": resolve_shards(cfg.val_shards, cfg.root, "val")}


def load_shard_tensors(cfg: DataConfig, *, verbose: bool = True) -> dict[str, TensorSplit]:
    """``{"train": ..., "val": ...}`` of ``cfg``'s shards, decoded once into the tensor cache
    (``cache_dir`` or :func:`default_cache_dir`, under ``tensors/<name>-wds-<fingerprint>``)."""
    classes = read_classes(cfg)
    shards = shard_lists(cfg)
    key = shard_fingerprint(shards, classes)
    name = Path(cfg.root).resolve().name if cfg.root else Path(shards["train"][0]).parent.name
    folder = Path(cfg.cache_dir or default_cache_dir()) / "tensors" / f"{name}-wds-{key}"
    reader = ShardReader(len(classes))

    def build() -> dict[str, TensorSplit]:
        data = {split: decode_split(reader, urls, classes) for split, urls in shards.items()}
        sizes = {split: tuple(part.images.shape[-2:]) for split, part in data.items()}
        if sizes["train"] != sizes["val"]:
            raise DataError(f"{shards['val'][0]}: val images are {sizes['val'][1]}x{sizes['val'][0]} "
                            f"but train images ({shards['train'][0]}) are "
                            f"{sizes['train'][1]}x{sizes['train'][0]}; train and val must be one size")
        return data

    total = sum(len(v) for v in shards.values())
    return cached_splits(folder, build, " ".join(shards["train"][:1]),
                         announce=f"the {total} shards of {cfg.root or shards['train'][0]}"
                         if verbose else None)


__all__ = ["IMAGE_KEYS", "ShardReader", "check_tar_end", "decode_split", "is_url",
           "load_shard_tensors", "read_classes", "resolve_shards", "shard_fingerprint",
           "shard_lists"]
