"""Data modules: real Fashion-MNIST, fallbacks, on-device batching, seeded order, torchvision formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import sparsetrain.data.fashion_mnist as fm
from sparsetrain.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataUnavailableError,
    DeviceLoader,
    DigitsDataModule,
    EpochSampler,
    FakeDataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    ResumableDataLoader,
)
from sparsetrain.module import ClassificationModule
from tests.helpers.nets import MLP

HAS_FMNIST = fm._has_files(fm.SYSTEM_DIR)


def _write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _tiny_fmnist(root, n=20):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for images, labels in fm.FILES.values():
        _write_idx(root / images, rng.integers(0, 255, (n, 28, 28)))
        _write_idx(root / labels, rng.integers(0, 10, (n,)))


@pytest.mark.skipif(not HAS_FMNIST, reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_splits():
    dm = FashionMNISTDataModule(root="/nonexistent", val_fraction=0.1, seed=0)
    dm.setup("fit")
    assert [len(dm.splits[k][0]) for k in ("train", "val", "test")] == [54000, 6000, 10000]
    x, y = dm.splits["train"]
    assert x.shape[1:] == (1, 28, 28) and y.min() == 0 and y.max() == 9
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # normalised
    other = FashionMNISTDataModule(root="/nonexistent", val_fraction=0.1, seed=0)
    other.setup("fit")
    assert torch.equal(other.splits["val"][1], dm.splits["val"][1])  # seeded split


def test_root_is_preferred_and_missing_data_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "empty")
    monkeypatch.setattr(FashionMNISTDataModule, "_download", lambda self: False)
    missing = FashionMNISTDataModule(root=str(tmp_path / "nothing"))
    with pytest.raises(DataUnavailableError) as info:
        missing.prepare_data()
    msg = str(info.value)
    assert "\n" not in msg and "apt-get install dataset-fashion-mnist" in msg and str(tmp_path / "nothing") in msg
    _tiny_fmnist(tmp_path / "fm")
    dm = FashionMNISTDataModule(root=str(tmp_path / "fm"), val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.splits["train"][0]) == 15 and len(dm.splits["test"][0]) == 20


def test_download_attempt_fails_fast_offline(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "empty")
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError):
        FashionMNISTDataModule(root=str(tmp_path / "dl")).prepare_data()
    assert time.perf_counter() - start < 60


def test_order_is_a_function_of_seed_and_epoch_in_both_modes():
    orders = []
    for on_device in (False, True):
        dm = FakeDataModule(num_samples=64, batch_size=8, on_device=on_device, seed=3)
        dm.setup("fit")
        loader = dm.train_dataloader()
        epochs = []
        for epoch in (0, 1):
            (loader.sampler if not on_device else loader).set_epoch(epoch)
            epochs.append(torch.cat([y for _, y in loader]))
        orders.append(epochs)
    assert torch.equal(orders[0][0], orders[1][0]) and torch.equal(orders[0][1], orders[1][1])
    assert not torch.equal(orders[0][0], orders[0][1])


class Offset(torch.utils.data.Dataset):
    """Item i is i + offset; the offset is set in each worker by `set_offset` (a loader that dropped its
    `worker_init_fn` yields other values)."""

    offset = 0

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> int:
        return i + self.offset


def set_offset(worker_id: int) -> None:
    torch.utils.data.get_worker_info().dataset.offset = 1000


def test_a_resumed_pass_skips_the_trained_batches_with_the_loaders_own_workers():
    """After a mid-epoch position (epoch 1, 2 batches handed out) the pass yields the rest of that epoch's
    batches, loaded by workers set up as the loader's (`worker_init_fn`), and only that pass skips."""

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(Offset(), sampler=EpochSampler(40, seed=0), batch_size=8, num_workers=2,
                                   worker_init_fn=set_offset)  # fmt: skip

    full = loader()
    full.sampler.set_epoch(1)
    epoch = [b.tolist() for b in full]
    resumed = loader()
    resumed.load_state_dict({"epoch": 1, "batches": 2})
    assert [b.tolist() for b in resumed] == epoch[2:]
    assert resumed.position == 5
    assert [b.tolist() for b in resumed] == epoch  # the next pass of the same epoch is whole


def test_device_loader_shards_ranks_like_distributed_sampler():
    x, y = torch.arange(20).float().unsqueeze(1), torch.arange(20)
    shards = [
        torch.cat([b for _, b in DeviceLoader(x, y, 3, True, True, seed=0, rank=r, world_size=2)]) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 9 and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_on_device_loader_in_a_real_fit(trainer):
    dm = FakeDataModule(
        num_samples=80, num_test=16, in_chans=1, image_size=4, num_classes=4, batch_size=8, on_device=True
    )
    module = ClassificationModule(MLP(d_in=16), 4, {"name": "sgd", "lr": 0.1})
    fitted = trainer(max_epochs=1)
    fitted.fit(module, datamodule=dm)
    assert fitted.estimated_stepping_batches == len(dm.train_dataloader()) == 72 // 8
    assert fitted.global_step == 9


def _write_cifar(root, hundred: bool):
    rng = np.random.default_rng(0)

    def batch(n):
        d = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8)}
        d["fine_labels" if hundred else "labels"] = rng.integers(0, 100 if hundred else 10, n).tolist()
        return d

    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    files = {"train": 12, "test": 6} if hundred else {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 6}
    for name, n in files.items():
        (folder / name).write_bytes(pickle.dumps(batch(n)))
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(100)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(10)]}
    )
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))


@pytest.mark.parametrize(("cls", "hundred"), [(CIFAR10DataModule, False), (CIFAR100DataModule, True)])
def test_cifar_reads_torchvisions_format(tmp_path, monkeypatch, cls, hundred):
    _write_cifar(tmp_path, hundred)
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # torchvision checks the real files' md5
    dm = cls(root=str(tmp_path), val_fraction=0.25, on_device=True)
    dm.setup("fit")
    x, y = dm.splits["train"]
    assert x.shape[1:] == (3, 32, 32) and len(dm.splits["test"][0]) == 6
    assert dm.num_classes == (100 if hundred else 10)


def test_cifar_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="cifar10 not found: expected .*cifar-10-batches-py"):
        CIFAR10DataModule(root=str(tmp_path)).prepare_data()


def test_digits_and_imagenet_folder(tmp_path):
    dm = DigitsDataModule(val_fraction=0.1)
    dm.setup("fit")
    assert dm.image_size == 8 and len(dm.splits["test"][0]) == round(0.2 * 1797)
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((12, 12, 3), i * 40, dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    inet = ImageNetDataModule(root=str(tmp_path), image_size=8, batch_size=2, num_workers=0, val_fraction=0.34)
    assert inet.num_classes == 2
    inet.setup("fit")
    x, _ = next(iter(inet.train_dataloader()))
    assert x.shape == (2, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_data_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FakeDataModule(**kwargs)
