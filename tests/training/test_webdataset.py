"""The webdataset source: tar shards decoded once into the tensor cache, or streamed by shard."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from nas.config import ConfigError
from nas.training.data import make_loaders
from nas.training.data_config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, DataError
from nas.training.shard_stream import train_steps
from nas.training.shards import ShardReader, decode_split, read_classes, resolve_shards

wds = pytest.importorskip("webdataset")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_IMAGENET = REPO.parent / "shared" / "datasets" / "tiny-imagenet"
CLASSES = ("n001", "n002", "n003")


def _image(number: int, *, gray: bool = False, size: int = 8, fmt: str = "JPEG") -> bytes:
    """An image whose first pixel encodes ``number`` (exact in PNG; JPEG for realism)."""
    rng = np.random.default_rng(number)
    pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    pixels[0, 0] = (number % 256, number // 256, 7)
    image = Image.fromarray(pixels)
    if gray:
        image = image.convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_shard(path: Path, samples: list[dict[str, bytes | str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def _sample(number: int, label: int, **kw: object) -> dict[str, bytes | str]:
    ext = "png" if kw.get("fmt") == "PNG" else "jpg"
    return {"__key__": f"s{number:04d}", ext: _image(number, **kw),  # type: ignore[arg-type]
            "cls": str(label).encode()}


def _dataset(root: Path, *, train_shards: int = 2, per_shard: int = 6, val: int = 6,
             fmt: str = "JPEG") -> Path:
    """``root/train/train-000i.tar``, ``root/val/val-0000.tar``, ``root/classes.tsv``;
    labels cycling over the 3 classes, every third JPEG grayscale."""
    number = 0
    for s in range(train_shards):
        samples = []
        for _ in range(per_shard):
            # PNG samples keep their number in colour (the streaming tests read it back).
            samples.append(_sample(number, number % 3, gray=fmt == "JPEG" and number % 3 == 1, fmt=fmt))
            number += 1
        _write_shard(root / "train" / f"train-{s:04d}.tar", samples)
    _write_shard(root / "val" / "val-0000.tar",
                 [_sample(1000 + i, i % 3, gray=fmt == "JPEG" and i == 0, fmt=fmt) for i in range(val)])
    (root / "classes.tsv").write_text(
        "".join(f"{i}\t{name}\tthe {name} class\n" for i, name in enumerate(CLASSES)))
    return root


def _cfg(root: Path, cache: Path, **fields: object) -> DataConfig:
    base = dict(name="webdataset", root=str(root), class_list="classes.tsv", resolution=8,
                batch_size=4, cache_dir=str(cache), augment="pad_crop")
    return DataConfig.from_dict({**base, **fields})


def _cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "tensors").rglob("*")) if (cache / "tensors").exists() else []


# ---------------------------------------------------------------------------- decoded once
def test_shards_decode_once_into_the_tensor_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "data")
    cfg = _cfg(root, tmp_path / "cache")
    loaders = make_loaders(cfg, seed=0)
    assert "decoding" in capsys.readouterr().out
    train, val = loaders.train, loaders.val
    assert loaders.num_classes == 3 and loaders.classes == CLASSES
    assert train.images.shape == (12, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [n % 3 for n in range(12)]  # shard order, as written
    assert val.images.shape == (6, 3, 8, 8)
    # The pixels are PIL's decoding of the stored bytes; grayscale JPEGs come out as RGB.
    for n in (0, 1):
        with Image.open(io.BytesIO(_image(n, gray=n % 3 == 1))) as img:
            expected = torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(train.images[n], expected)
    gray = train.images[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(train.images[0][0], train.images[0][1])
    # A second run reads the cache and decodes nothing.
    again = make_loaders(cfg, seed=0)
    assert "decoding" not in capsys.readouterr().out
    assert torch.equal(again.train.images, train.images)
    batch, labels = next(iter(again.train))
    assert batch.shape == (4, 3, 8, 8) and batch.dtype == torch.float32 and len(labels) == 4


def test_the_cache_follows_the_shards_and_subsets_are_balanced(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    make_loaders(_cfg(root, cache), seed=0)
    _write_shard(root / "train" / "train-0002.tar", [_sample(500 + i, i % 3) for i in range(3)])
    grown = make_loaders(_cfg(root, cache), seed=0)
    assert len(grown.train.labels) == 15  # a new shard: a new cache key, decoded again
    assert len(list((cache / "tensors").iterdir())) == 2
    subset = make_loaders(_cfg(root, cache, train_per_class=2), seed=0)
    assert torch.bincount(subset.train.labels).tolist() == [2, 2, 2]


def test_shard_patterns_lists_and_brace_ranges(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data", train_shards=3)
    expected = [str(root / "train" / f"train-{i:04d}.tar") for i in range(3)]
    assert resolve_shards(None, str(root), "train") == expected
    assert resolve_shards("train/train-{0000..0002}.tar", str(root), "train") == expected
    assert resolve_shards([expected[2], "train/train-0000.tar"], str(root), "train") == [
        expected[2], expected[0]]
    assert resolve_shards("https://example.org/s-{0..1}.tar", None, "train") == [
        "https://example.org/s-0.tar", "https://example.org/s-1.tar"]  # never opened here


# ---------------------------------------------------------------------------- bad input
def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_missing_shard_and_an_empty_glob_are_named(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        make_loaders(_cfg(root, cache, train_shards=["train/train-0000.tar", "train/train-0007.tar"]))
    assert "train-0007.tar: missing train shard" in _one_line(err)
    with pytest.raises(DataError) as err:
        make_loaders(_cfg(root, cache, val_shards="val/other-*.tar"))
    assert "val/other-*.tar: no val shard matches" in _one_line(err)
    assert _cache_files(cache) == []


def _break(root: Path, how: str) -> tuple[str, str]:
    """Spoil the second training shard; returns (shard, text the error must hold)."""
    shard = root / "train" / "train-0001.tar"
    if how == "truncated":  # inside a member
        data = shard.read_bytes()
        shard.write_bytes(data[:len(data) // 2 + 100])
        return str(shard), f"truncated tar ({len(data) // 2 + 100} bytes is not a whole number of 512-byte blocks)"
    if how == "truncated_at_a_block":  # the end-of-archive marker cut off
        data = shard.read_bytes()
        shard.write_bytes(data[:3072])
        return str(shard), "truncated tar (no end-of-archive marker)"
    if how == "no_cls":
        samples = [_sample(6 + i, i % 3) for i in range(6)]
        del samples[2]["cls"]
        _write_shard(shard, samples)
        return str(shard), "sample 's0008' has no .cls"
    if how == "label":
        samples = [_sample(6 + i, 7 if i == 4 else i % 3) for i in range(6)]
        _write_shard(shard, samples)
        return str(shard), "sample 's0010' has label 7, outside the 3 classes"
    if how == "corrupt_jpeg":
        samples = [_sample(6 + i, i % 3) for i in range(6)]
        samples[1]["jpg"] = b"\xff\xd8 not a jpeg"
        _write_shard(shard, samples)
        return str(shard), "sample 's0007' cannot be decoded"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "truncated_at_a_block", "no_cls", "label", "corrupt_jpeg"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_shard_names_the_shard_and_key_and_caches_nothing(tmp_path: Path, how: str,
                                                                 stream: bool) -> None:
    root = _dataset(tmp_path / "data")
    shard, expected = _break(root, how)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        loaders = make_loaders(_cfg(root, cache, stream=stream, num_workers=0), seed=0)
        for _ in loaders.train:  # a stream meets the sample when it reads it
            pass
    text = _one_line(err)
    assert text.startswith(shard) and expected in text, text
    assert _cache_files(cache) == []  # nothing half-written


def test_a_remote_shard_cut_short_is_named_with_the_last_sample_read(tmp_path: Path) -> None:
    """A URL cannot be checked before it is read: the tar breaking off names the sample
    before it (``pipe:`` runs a command: a remote read without a network)."""
    root = _dataset(tmp_path / "data")
    shard = root / "train" / "train-0001.tar"
    url = f"pipe:head -c {shard.stat().st_size * 2 // 3 + 100} {shard}"  # inside a member
    with pytest.raises(DataError) as err:
        make_loaders(_cfg(root, tmp_path / "cache", train_shards=[str(root / "train" / "train-0000.tar"), url]))
    text = _one_line(err)
    assert text.startswith(url) and "truncated or corrupt after sample 's000" in text, text
    assert _cache_files(tmp_path / "cache") == []


def test_a_bad_shard_read_by_a_loader_worker_is_one_line(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    shard, expected = _break(root, "label")
    loaders = make_loaders(_cfg(root, tmp_path / "cache", stream=True, num_workers=2), seed=0)
    with pytest.raises(DataError) as err:
        for _ in loaders.train:
            pass
    assert _one_line(err).startswith(shard) and expected in str(err.value)


def test_class_list_and_config_errors(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    (root / "bad.tsv").write_text("0\ta\n2\tb\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected '1<TAB>name"):
        read_classes(_cfg(root, tmp_path, class_list="bad.tsv"))
    with pytest.raises(DataError, match="lists 3 classes but DataConfig.num_classes is 5"):
        read_classes(_cfg(root, tmp_path, num_classes=5))
    assert read_classes(_cfg(root, tmp_path, class_list=None, num_classes=4)) == ("0", "1", "2", "3")
    with pytest.raises(ConfigError, match="needs class_list .* or num_classes"):
        _cfg(root, tmp_path, class_list=None)
    with pytest.raises(ConfigError, match="train_shards needs name='webdataset'"):
        DataConfig(name="cifar10", root="x", train_shards="a.tar")
    with pytest.raises(ConfigError, match="train_per_class needs the tensor cache"):
        _cfg(root, tmp_path, stream=True, train_per_class=2)
    with pytest.raises(ConfigError, match="val_samples is not available with stream=true"):
        _cfg(root, tmp_path, stream=True, val_samples=2)
    with pytest.raises(ConfigError, match="resized_crop"):
        _cfg(root, tmp_path, augment="resized_crop")
    with pytest.raises(ConfigError, match="train_shards must be a shard pattern"):
        _cfg(root, tmp_path, train_shards=[1, 2])
    with pytest.raises(ConfigError, match="rank 1 of 2 given, but the environment"):
        make_loaders(_cfg(root, tmp_path, stream=True), rank=1, world=2)


def test_shard_fields_leave_other_sources_settings_unchanged() -> None:
    plain = DataConfig(name="cifar10", root="x").settings()
    assert not {"train_shards", "val_shards", "class_list", "stream"} & set(plain)
    streamed = DataConfig(name="webdataset", root="x", num_classes=3, stream=True).settings()
    assert streamed["stream"] is True and streamed["num_workers"] == 0


# ---------------------------------------------------------------------------- streaming
def _ids(batch: torch.Tensor) -> list[int]:
    """The sample numbers written into the first pixel (PNG, no augmentation)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3) * 255
    first = (batch[:, :, 0, 0] * std + mean).round().long()
    return (first[:, 0] + 256 * first[:, 1]).tolist()


@pytest.fixture
def env_rank(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    def set_rank(rank: int, world: int) -> None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
    yield set_rank


def _epoch(loader: object, epoch: int, start: int = 0) -> list[list[int]]:
    loader.sampler.set_epoch(epoch, start)  # type: ignore[attr-defined]
    return [_ids(images) for images, _ in loader]  # type: ignore[attr-defined]


def test_stream_two_ranks_two_workers_read_every_sample_once_in_a_fixed_order(
        tmp_path: Path, env_rank: object) -> None:
    root = _dataset(tmp_path / "data", train_shards=8, per_shard=6, fmt="PNG")
    cfg = _cfg(root, tmp_path / "cache", stream=True, num_workers=2, augment="none")
    every = set(range(48))
    streams = []
    for rank in (0, 1):
        env_rank(rank, 2)  # type: ignore[operator]
        streams.append(make_loaders(cfg, seed=3, rank=rank, world=2).train)
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for rank, stream in enumerate(streams):  # each rank's process has its own RANK
            env_rank(rank, 2)  # type: ignore[operator]
            per_rank.append(_epoch(stream, epoch))
        assert [len(b) for b in per_rank] == [len(streams[0])] * 2 == [12, 12]  # equal steps
        assert all(len(batch) == 2 for batches in per_rank for batch in batches)  # 4 / 2 ranks
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(seen) == sorted(every)  # every sample once
        first = {i for batch in per_rank[0] for i in batch}
        assert not first & {i for batch in per_rank[1] for i in batch}  # disjoint ranks
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]  # a new shard and sample order every epoch
    # The same epoch again, and a resume 5 batches in: the same batches.
    env_rank(0, 2)  # type: ignore[operator]
    assert _epoch(streams[0], 1) == epochs[1][0]
    assert _epoch(streams[0], 0, start=5 * 4) == epochs[0][0][5:]
    assert len(streams[0]) == 7
    # The val stream is the whole split in shard order on every rank.
    val = make_loaders(cfg, seed=3, rank=0, world=2).val
    assert [i for batch in val for i in _ids(batch[0])] == list(range(1000, 1006))


def test_stream_trains_and_matches_a_fresh_run(tmp_path: Path) -> None:
    from nas.training.train import train
    from nas.training.train_config import TrainConfig

    from conftest import TINY

    root = _dataset(tmp_path / "data", train_shards=2, per_shard=8)
    cfg = _cfg(root, tmp_path / "cache", stream=True, resolution=32, batch_size=4)
    train_cfg = TrainConfig(epochs=2, lr=0.05, device="cpu", progress=False,
                            bn_recalibration_batches=2, warmup_epochs=0.0)
    first = train(TINY.replace(num_classes=3), cfg, train_cfg)
    second = train(TINY.replace(num_classes=3), cfg, train_cfg)
    assert first.steps == 8 and first.top1 == second.top1 and first.loss == second.loss


def test_the_step_bound_holds_for_every_shard_deal() -> None:
    """Whatever order an epoch deals unequal shards in, every rank fills the steps."""
    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(2, 12))]
        world = rng.choice([1, 2, 3])
        workers = rng.choice([0, 1, 2, 3])
        if len(sizes) < world * max(workers, 1):
            continue
        batch = rng.randint(1, 8)
        steps = train_steps(sizes, world, workers, batch)
        order = rng.sample(sizes, len(sizes))
        for rank in range(world):
            mine = order[rank::world]
            filled = sum(sum(mine[w::max(workers, 1)]) // batch for w in range(max(workers, 1)))
            assert steps <= filled, (sizes, world, workers, batch)
    # Equal shards that divide evenly: nothing is left out.
    assert train_steps([6] * 8, 2, 2, 2) == 12 and train_steps([10000] * 4 + [5000], 1, 0, 128) == 351


# ---------------------------------------------------------------------------- the real set
def test_the_shared_tiny_imagenet_shards() -> None:
    if not (TINY_IMAGENET / "val").is_dir():
        pytest.skip(f"shared dataset not found at {TINY_IMAGENET}")
    cfg = DataConfig(name="webdataset", root=str(TINY_IMAGENET), class_list="classes.tsv",
                     num_classes=100)
    classes = read_classes(cfg)
    assert len(classes) == 100 and classes[0] == "n01443537"
    train = resolve_shards("train/train-*.tar", cfg.root, "train")
    assert [Path(s).name for s in train] == [f"train-{i:04d}.tar" for i in range(5)]
    val = resolve_shards("val/val-*.tar", cfg.root, "val")
    reader = ShardReader(100)
    assert reader.count_samples(val) == [5000]
    split = decode_split(reader, val, classes)
    assert split.images.shape == (5000, 3, 64, 64)
    assert torch.bincount(split.labels, minlength=100).tolist() == [50] * 100
    gray = (split.images[:, 0] == split.images[:, 1]).flatten(1).all(1) & \
           (split.images[:, 1] == split.images[:, 2]).flatten(1).all(1)
    assert 0.005 < gray.float().mean() < 0.05  # ~2% grayscale JPEGs, read as RGB
