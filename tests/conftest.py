"""Fixtures shared by the test suite.

Real photos come from ../shared/data/cats-vs-dogs when it is beside the
checkout (tests that need them skip otherwise); everything else uses the
embedded sample dataset, generated small so the suite stays quick on two cores.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.hostile import blobs, fuzz_model, three_photos  # noqa: F401 (fixtures of hostile inputs)
from train.quiet import quiet_tensorflow

ROOT = Path(__file__).resolve().parent.parent
SHARED_PHOTOS = Path(os.environ.get("NOODLE_SHARED_PHOTOS", ROOT.parent / "shared/data/cats-vs-dogs"))

quiet_tensorflow()

# Third-party warnings only, each for its reason (ours are fixed where they arise):
THIRD_PARTY_WARNINGS = [
    # Keras converts TensorFlow tensors with np.array(x); TensorFlow's __array__ takes no `copy`
    # keyword, which numpy 2 deprecates: between those two libraries, on every Keras predict.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.*",
    # Keras 3.12+'s loader on a file whose nested containers it finds no group for (its note on files
    # of older Keras versions). noodle's own models (allconv, classic, lite0) save and load without it;
    # the tests that load models hold them to accuracy figures, which untrained weights would fail.
    "ignore:Skipping nested container:UserWarning:keras.*",
]


def pytest_configure(config):
    for line in THIRD_PARTY_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def shared_photos() -> Path:
    if not (SHARED_PHOTOS / "train").is_dir():
        pytest.skip(f"shared photos not found at {SHARED_PHOTOS}")
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A small copy of the embedded default: 60 train and 20 test photos per class."""
    from train.sample import write_sample

    out = tmp_path_factory.mktemp("data") / "sample"
    write_sample(out, seed=1, train_per_class=60, test_per_class=20)
    return out


@pytest.fixture(scope="session")
def trained_run(sample_data, tmp_path_factory) -> Path:
    """A run folder with a model trained for a few epochs on `sample_data`."""
    from train.fit import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "sample-allconv"
    train(TrainConfig(data=sample_data, out=out, arch="allconv", epochs=4, patience=10, verbose=0))
    return out


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """A copy of `trained_run` with all four variants exported to RUN/export/."""
    import shutil

    from export.convert import export_run

    out = tmp_path_factory.mktemp("exported") / trained_run.name
    out.mkdir()
    for name in ("model.keras", "splits.csv", "manifest.json"):
        shutil.copy2(trained_run / name, out / name)
    export_run(out)
    return out


def stand_in_download(specs, target, dest) -> None:
    """PyPI's part in `noodle bundle`, for tests: a tiny py3 wheel per requirement, named by it.

    `noodle bundle` pins every wheel by sha256 (a bundle without wheels too),
    so it downloads them; tests stand in for the index, as install.sh's tests
    point pip at a closed one. Tests of the pins themselves pass their own.
    """
    import re

    for spec in specs:
        name, version = re.match(r"([A-Za-z0-9_.-]+)(?:==([^;,]+))?", spec).groups()
        wheel = dest / f"{name.replace('-', '_')}-{version or '1.0'}-py3-none-any.whl"
        wheel.write_bytes(f"{name} {version or '1.0'}".encode())


@pytest.fixture(scope="session", autouse=True)
def no_wheel_downloads(tmp_path_factory):
    """`noodle bundle` in tests downloads nothing and leaves this checkout's wheel cache alone."""
    from export import bundle, wheelhouse

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wheelhouse, "pip_download", stand_in_download)
        patch.setattr(bundle, "WHEEL_CACHE", tmp_path_factory.mktemp("wheel-cache"))
        yield


@pytest.fixture(scope="module")
def model(exported_run) -> Path:
    """The exported run's int8 model, as serve and the device run it (a module may define its own)."""
    return exported_run / "export" / "int8.tflite"


@pytest.fixture(scope="module")
def photos(sample_data) -> list[Path]:
    """The sample's test photos, sorted (a module may define its own)."""
    return sorted((sample_data / "test").rglob("*.jpg"))
