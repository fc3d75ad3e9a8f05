"""Parquet sets: the split a file's path gives, the columns and class names found, every row staged."""

from __future__ import annotations

import io
import tarfile

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from in21k.errors import DataError
from in21k.pipeline.options import ParquetOptions
from in21k.pipeline.parquet_source import inspect, split_of, stage_file, tasks
from in21k.pipeline.plan import UNLABELLED

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 60
WEBP = b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"y" * 40


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("data/train-00000-of-00010.parquet", "train"),
        ("data/validation-00000-of-00001.parquet", "validation"),
        ("val/0001.parquet", "validation"),
        ("test/x.parquet", "test"),
        ("imagenet_valid.parquet", "validation"),
        ("intervals/part-0.parquet", "unsplit"),
        ("training/retrain-1.parquet", "train"),
    ],
)
def test_split_of_a_path(path: str, split: str) -> None:
    assert split_of(path) == split


def test_names_from_a_readme_and_every_row_staged_with_its_wnid(tmp_path) -> None:
    root = tmp_path / "set"
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: img\n    dtype: image\n  - name: target\n    dtype:\n"
        "      class_label:\n        names:\n          '0': n01440764\n          '1': n01443537\n---\n# a set\n"
    )
    images = [
        {"bytes": JPEG, "path": "a/n01440764_1.JPEG"},
        {"bytes": WEBP, "path": None},
        None,
        {"bytes": JPEG, "path": "n01443537_9.JPEG"},
    ]
    table = pa.table(
        {
            "img": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "target": pa.array([0, 1, -1, None], pa.int64()),
        }
    )
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet")
    fs = fsspec.filesystem("file")
    files = [str(root / "data" / "train-00000-of-00001.parquet")]
    spec = inspect(str(root), files, fs, ParquetOptions())
    assert (spec.image_column, spec.struct, spec.label_column) == ("img", True, "target")
    assert spec.names == ("n01440764", "n01443537")
    (container,) = tasks(str(root), fs, str(root), files, spec, str(tmp_path / "staging"))
    rows = stage_file(container)
    assert rows["wnid"] == ["n01440764", "n01443537", UNLABELLED, UNLABELLED]
    # Rows without a file name are named after the file and the row (and their format).
    assert rows["member"] == [
        "n01440764_1.JPEG",
        "data__train-00000-of-00001_00000001.webp",
        "data__train-00000-of-00001_00000002.bin",
        "n01443537_9.JPEG",
    ]
    assert rows["size"] == [len(JPEG), len(WEBP), 0, len(JPEG)]
    staged = rows["source"][0]
    assert staged.endswith("staging/parquet/train/data__train-00000-of-00001.tar")
    blob = open(staged, "rb").read()
    assert [blob[o : o + n] for o, n in zip(rows["offset"], rows["size"], strict=True)] == [JPEG, WEBP, b"", JPEG]
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert len(tar.getmembers()) == 4  # a plain tar: readable by any tool


def test_bad_sets_name_what_to_fix(tmp_path) -> None:
    fs = fsspec.filesystem("file")
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": pa.array([JPEG]), "label": pa.array([3])}), path)
    with pytest.raises(DataError, match="the labels are class indices but the files carry no class names"):
        inspect(str(path), [str(path)], fs, ParquetOptions())
    (tmp_path / "two.txt").write_text("n01440764\nn01443537\n")
    spec = inspect(str(path), [str(path)], fs, ParquetOptions(label_names=str(tmp_path / "two.txt")))
    (container,) = tasks(str(path), fs, str(path), [str(path)], spec, str(tmp_path / "staging"))
    with pytest.raises(DataError, match="row 0: label 3 but --parquet.label-names .* has 2 names"):
        stage_file(container)
    pq.write_table(pa.table({"image": pa.array([JPEG]), "cls": pa.array(["tench"])}), path)
    spec = inspect(str(path), [str(path)], fs, ParquetOptions())
    assert spec.names is None  # string labels: wnids, checked row by row
    (container,) = tasks(str(path), fs, str(path), [str(path)], spec, str(tmp_path / "staging"))
    with pytest.raises(DataError, match="label 'tench' is not a wnid"):
        stage_file(container)
    with pytest.raises(DataError, match="--parquet.image-column 'photo' is not a column of image bytes"):
        inspect(str(path), [str(path)], fs, ParquetOptions(image_column="photo"))
    assert ParquetOptions().fingerprint() == {"image_column": None, "label_column": None, "label_names": None}
