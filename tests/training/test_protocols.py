"""Named training protocols: the shipped files, overrides, and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nas.arch.codecs import load_spec
from nas.cli.train import _configs, _explicit_options, build_parser
from nas.config import ConfigError
from nas.models.builder import build_model
from nas.training.protocols import CHECKOUT, load_protocol, protocol_names


def test_shipped_protocols_load_and_differ_in_cost() -> None:
    assert protocol_names() == ["finetune_tin", "proxy", "proxy_b256", "proxy_tin", "proxy_tin32", "proxy_tin48",
                                "proxy_tin_full", "reference", "reference_tin"]
    proxy, reference = load_protocol("proxy"), load_protocol("reference")
    assert proxy.data.name == reference.data.name == "cifar10"
    # The data root is the checkout's sibling shared/ folder wherever the command runs.
    assert Path(proxy.data.root) == (CHECKOUT / "../shared/datasets/cifar10").resolve()

    def pixels_seen(protocol) -> int:  # training cost: epochs x images x pixels per image
        images = (protocol.data.train_per_class or 4_500) * 10
        return protocol.train.epochs * images * protocol.data.resolution ** 2

    assert pixels_seen(reference) >= 10 * pixels_seen(proxy)
    # The proxy before differs only in its batch and (linearly scaled) learning rate, so the
    # ablation results measured with it stay keyed by its settings.
    before = load_protocol("proxy_b256")
    assert before.data.batch_size == 2 * proxy.data.batch_size and before.train.lr == 2 * proxy.train.lr
    assert before.key() != proxy.key()


def test_the_tiny_imagenet_protocols_read_the_shards_at_64_px() -> None:
    proxy, reference = load_protocol("proxy_tin"), load_protocol("reference_tin")
    for protocol in (proxy, reference):
        assert protocol.data.name == "webdataset" and protocol.data.resolution == 64
        assert protocol.data.num_classes == 100 and protocol.data.class_list == "classes.tsv"
        assert Path(protocol.data.root) == (CHECKOUT / "../shared/datasets/tiny-imagenet").resolve()
    images = lambda p: p.train.epochs * (p.data.train_per_class or 450) * 100  # noqa: E731
    assert images(reference) >= 10 * images(proxy)
    assert proxy.key() != reference.key() != load_protocol("reference").key()
    # The 32 px proxy reads the same cached 64 px images, resized per batch: the whole train
    # split, at a quarter of the pixels, for a tenth of the reference's images.
    small = load_protocol("proxy_tin32")
    assert small.data.resolution == 32 and small.data.train_per_class is None
    assert small.data.root == reference.data.root and small.data.train_shards == reference.data.train_shards
    assert images(reference) >= 10 * images(small) and small.key() not in (proxy.key(), reference.key())



def test_the_48_px_proxy_keeps_the_reference_last_stage_map() -> None:
    # Why proxy_tin48 and not proxy_tin32: MobileNetV3 downsamples 32x, and the 48 px proxy's
    # last stage sees the same 2x2 map as reference_tin's 64 px, where 32 px collapses it to 1x1.
    reference, proxy32, proxy48 = (load_protocol(n) for n in ("reference_tin", "proxy_tin32", "proxy_tin48"))
    assert proxy48.data.train_per_class is None and proxy48.data.root == reference.data.root
    small = build_model(load_spec("small"), num_classes=100).eval()

    def last_map(resolution: int) -> int:
        with torch.no_grad():
            return small.features(torch.zeros(1, 3, resolution, resolution)).shape[-1]

    assert last_map(proxy48.data.resolution) == last_map(reference.data.resolution) == 2
    assert last_map(proxy32.data.resolution) == 1
    images = lambda p: p.train.epochs * (p.data.train_per_class or 450) * 100  # noqa: E731
    assert images(reference) >= 10 * images(proxy48) and proxy48.key() not in (proxy32.key(), reference.key())

def test_overrides_are_validated_and_named() -> None:
    cheap = load_protocol("reference", data={"train_per_class": 10}, train={"epochs": 1})
    assert cheap.data.train_per_class == 10 and cheap.train.epochs == 1
    with pytest.raises(ConfigError, match="reference.yaml: TrainConfig.epochs must be an integer >= 1"):
        load_protocol("reference", train={"epochs": 0})
    with pytest.raises(ConfigError, match=r"unknown protocol 'nope'; shipped protocols: \['finetune_tin', 'proxy', 'proxy_b256', 'proxy_tin', 'proxy_tin32', 'proxy_tin48', 'proxy_tin_full', 'reference', 'reference_tin'\]"):
        load_protocol("nope")


@pytest.mark.parametrize("text, message", [
    ("data: {}\n", r"exactly two mappings, data: and train:; got \['data'\]"),
    ("data: [1]\ntrain: {}\n", "data: must be a mapping"),
    ("data: {name: cifar10\n", "not valid YAML"),
    ("data: {name: synthetic}\ntrain: {epochz: 2}\n", r"unknown key\(s\) \['epochz'\]"),
])
def test_bad_protocol_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_protocol(path)
    assert str(path) in str(info.value)


def test_nas_train_options_given_explicitly_override_the_protocol(tmp_path: Path) -> None:
    argv = ["small", "--protocol", "proxy", "--epochs", "1", "--lr", "0.05"]
    args = build_parser().parse_args(argv)
    data, train = _configs(args, tmp_path, _explicit_options(argv))
    assert train.epochs == 1 and train.lr == 0.05  # given
    assert train.weight_decay == load_protocol("proxy").train.weight_decay  # the protocol's
    proxy = load_protocol("proxy").data
    assert (data.resolution, data.train_per_class, data.batch_size) == (
        proxy.resolution, proxy.train_per_class, proxy.batch_size)  # not the CLI defaults
    assert train.checkpoint_dir == str(tmp_path / "checkpoint")


def test_the_search_can_score_candidates_with_a_protocol(tmp_path: Path) -> None:
    from nas.search.config import SearchConfig
    from nas.search.pipeline import build_evaluator

    cfg = SearchConfig(space={"name": "unused"}, data={"name": "synthetic"},
                       evaluator={"kind": "proxy", "cache": False, "protocol": "proxy",
                                  "train": {"epochs": 2, "device": "cpu", "progress": False}})
    evaluator = build_evaluator(cfg, tmp_path)
    proxy = load_protocol("proxy")
    # The protocol's data replaces the data group; the search trains and ranks on a holdout
    # carved from its train split (selection=holdout, the default) ...
    assert evaluator.data_cfg == dataclasses.replace(proxy.data, carve_val=True)
    assert evaluator.train_cfg.epochs == proxy.train.epochs and evaluator.train_cfg.device == "cpu"
    # ... or on its val split with selection=val.
    assert build_evaluator(cfg.replace(selection="val"), tmp_path).data_cfg == proxy.data
