"""Instances from every input flag: discovery, ordering, location enforcement, validation."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgenet.constants import IMG_EXTENSIONS
from edgenet.errors import InputError
from edgenet.instances import discover_images, prepare_instances, validate_instances


def reference_discovery(folders: list[str]) -> list[str]:
    """What speciesnet 5.0.6's prepare_instances_dict does for --folders (its algorithm)."""
    found = []
    for folder in folders:
        for ext in IMG_EXTENSIONS:
            found.extend(Path(folder).glob(f"**/*.{ext}"))
    return [p.as_posix() for p in sorted(set(found))]


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_folder_discovery_matches_reference_rules(tmp_path: Path) -> None:
    names = [
        "a.jpg", "b.JPG", "c.Jpg", "d.jpeg", "e.JPEG", "f.png", "g.PNG", "h.tif", "i.TIFF",
        "j.webp", "k.WEBP", "l.txt", "m.gif", "sub dir/n.jpg", "sub dir/deeper/o.png",
        "sub/p.jpg", "a b/q.jpg", ".hidden/r.jpg", "s.jpg.txt", "ünï/t.jpg",
    ]
    for name in names:
        _touch(tmp_path / name)
    (tmp_path / "dir.jpg").mkdir()  # a directory named like an image is found, as in pathlib
    got = [inst["filepath"] for inst in prepare_instances(folders=[str(tmp_path)])]
    assert got == reference_discovery([str(tmp_path)])
    base = tmp_path.as_posix()
    assert f"{base}/b.JPG" in got and f"{base}/c.Jpg" not in got
    assert f"{base}/l.txt" not in got and f"{base}/s.jpg.txt" not in got
    assert f"{base}/dir.jpg" in got and f"{base}/.hidden/r.jpg" in got
    # Path ordering (by components), not string ordering: "sub/" before "sub dir/".
    assert got.index(f"{base}/sub/p.jpg") < got.index(f"{base}/sub dir/n.jpg")


def test_overlapping_folders_are_deduplicated(tmp_path: Path) -> None:
    _touch(tmp_path / "x" / "1.jpg")
    _touch(tmp_path / "x" / "y" / "2.jpg")
    got = prepare_instances(folders=[str(tmp_path / "x"), str(tmp_path / "x" / "y")])
    paths = [inst["filepath"] for inst in got]
    assert paths == sorted(set(paths), key=lambda p: Path(p))
    # x/y/2.jpg is reached through both folders with the same path: listed once.
    assert len(paths) == 2
    assert paths == reference_discovery([str(tmp_path / "x"), str(tmp_path / "x" / "y")])


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_symlink_loop_does_not_hang_and_dir_links_are_not_followed(tmp_path: Path) -> None:
    _touch(tmp_path / "root" / "a.jpg")
    _touch(tmp_path / "other" / "b.jpg")
    (tmp_path / "root" / "loop").symlink_to(tmp_path / "root", target_is_directory=True)
    (tmp_path / "root" / "elsewhere").symlink_to(tmp_path / "other", target_is_directory=True)
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "other" / "b.jpg")
    (tmp_path / "root" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    got = [inst["filepath"] for inst in prepare_instances(folders=[str(tmp_path / "root")])]
    assert got == reference_discovery([str(tmp_path / "root")])
    assert any(p.endswith("/link.jpg") for p in got)
    assert not any("/elsewhere/" in p or "/loop/" in p for p in got)


def test_relative_folder_paths_are_kept_relative(tmp_path: Path, monkeypatch) -> None:
    _touch(tmp_path / "imgs" / "z.jpg")
    monkeypatch.chdir(tmp_path)
    assert prepare_instances(folders=["./imgs/"]) == [{"filepath": "imgs/z.jpg"}]


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="folder not found"):
        prepare_instances(folders=[str(tmp_path / "absent")])


def test_txt_inputs(tmp_path: Path) -> None:
    _touch(tmp_path / "f1" / "a.jpg")
    _touch(tmp_path / "f2" / "b.png")
    folders_txt = tmp_path / "folders.txt"
    folders_txt.write_text(f"{tmp_path / 'f1'}\n\n  {tmp_path / 'f2'}  \n", encoding="utf-8")
    got = [i["filepath"] for i in prepare_instances(folders_txt=folders_txt)]
    assert got == reference_discovery([str(tmp_path / "f1"), str(tmp_path / "f2")])
    files_txt = tmp_path / "files.txt"
    files_txt.write_text("b.jpg\n  a b.jpg \n", encoding="utf-8")
    assert prepare_instances(filepaths_txt=files_txt) == [
        {"filepath": "b.jpg"},
        {"filepath": "a b.jpg"},
    ]
    with pytest.raises(InputError, match="file not found"):
        prepare_instances(filepaths_txt=tmp_path / "nope.txt")


def test_filepaths_keep_order_and_duplicates() -> None:
    got = prepare_instances(filepaths=["b.jpg", "a.jpg", "b.jpg"])
    assert [i["filepath"] for i in got] == ["b.jpg", "a.jpg", "b.jpg"]


def test_exactly_one_input() -> None:
    with pytest.raises(InputError, match="Expected exactly one of"):
        prepare_instances(filepaths=["a.jpg"], folders=["x"])
    with pytest.raises(InputError, match="Expected exactly one of"):
        prepare_instances()


def test_location_enforcement_as_reference(tmp_path: Path) -> None:
    path = tmp_path / "inst.json"
    data = {
        "instances": [
            {"filepath": "a.jpg", "country": "USA", "admin1_region": "CA", "extra": 1},
            {"filepath": "b.jpg", "latitude": 1.5, "longitude": 2.5},
        ]
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    # Country only: admin1 of the instance survives (dict union, as the reference).
    got = prepare_instances(instances_json=path, country="AUS")
    assert got[0] == {"filepath": "a.jpg", "country": "AUS", "admin1_region": "CA", "extra": 1}
    assert got[1] == {"filepath": "b.jpg", "latitude": 1.5, "longitude": 2.5, "country": "AUS"}
    # admin1 without a country is ignored, as in the reference.
    assert prepare_instances(instances_json=path, admin1_region="NY") == data["instances"]
    got = prepare_instances(filepaths=["x.jpg"], country="USA", admin1_region="NY")
    assert got == [{"filepath": "x.jpg", "country": "USA", "admin1_region": "NY"}]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[]", "top level"),
        ('{"images": []}', 'missing the "instances" key'),
        ('{"predictions": []}', "looks like a predictions file"),
        ('{"instances": {}}', "must be a list"),
        ('{"instances": ["a.jpg"]}', "must be an object"),
        ('{"instances": [{"file": "a.jpg"}]}', '"filepath"'),
        ('{"instances": [{"filepath": ""}]}', '"filepath"'),
        ('{"instances": [{"filepath": "a", "country": 7}]}', '"country" must be a string'),
        ('{"instances": [{"filepath": "a", "latitude": "1"}]}', '"latitude" must be a number'),
        ('{"instances": [{"filepath": "a", "latitude": 91}]}', "outside"),
        ('{"instances": [{"filepath": "a", "country": "XXQ"}]}', "country"),
        ('{"instances": [', "not valid JSON"),
    ],
)
def test_bad_instances_json(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "instances.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        prepare_instances(instances_json=path)
    message = str(info.value)
    assert problem in message
    assert str(path) in message  # names the file


def test_binary_instances_json(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="UTF-8"):
        prepare_instances(instances_json=path)


_name = st.text(alphabet=string.ascii_letters + string.digits + " _-", min_size=1, max_size=6)
_ext = st.sampled_from(["jpg", "JPG", "Jpg", "png", "PNG", "jpeg", "tif", "TIFF", "webp", "txt"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=st.lists(st.tuples(st.lists(_name, max_size=2), _name, _ext), max_size=12))
def test_discovery_property(tmp_path_factory, files) -> None:
    root = tmp_path_factory.mktemp("tree")
    for dirs, stem, ext in files:
        path = root.joinpath(*dirs, f"{stem}.{ext}")
        try:
            _touch(path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name already used as a file/dir
    got = [p.as_posix() for p in discover_images([str(root)])]
    assert got == reference_discovery([str(root)])
    assert len(got) == len(set(got))


_instance = st.fixed_dictionaries(
    {"filepath": st.text(min_size=1, max_size=20)},
    optional={
        "latitude": st.none() | st.floats(-90, 90),
        "longitude": st.none() | st.floats(-180, 180),
        "admin1_region": st.none() | st.sampled_from(["CA", "NY"]),
        "country": st.none() | st.sampled_from(["USA", "KEN", "AUS"]),
    },
)


@settings(max_examples=50, deadline=None)
@given(instances=st.lists(_instance, max_size=8))
def test_valid_instances_property(instances) -> None:
    assert validate_instances({"instances": instances}, source="x.json") == instances


@settings(max_examples=100, deadline=None)
@given(data=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["instances", "filepath", "country", "latitude"]),
                      children, max_size=3),
    max_leaves=10,
))
def test_instances_validation_fuzz(data) -> None:
    """Any JSON value is either accepted as instances or refused with an InputError."""
    try:
        instances = validate_instances(data, source="fuzz.json")
    except InputError:
        return
    assert all(isinstance(i["filepath"], str) for i in instances)
