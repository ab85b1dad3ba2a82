"""The descriptor baseline: descriptor values, their invariances, and the command."""

import json

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("pymatgen")
pytest.importorskip("sklearn")

from pymatgen.core import Lattice, Structure  # noqa: E402

from deq_petsc.science.data.descriptors import (describe, molecule_descriptors, names,  # noqa: E402
                                        structure_descriptors)
from helpers import rock_salts_csv, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deq_cache")


def rock_salt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_molecule_descriptors_are_rdkit_values_and_ignore_atom_order():
    d = dict(zip(names("molecule"), molecule_descriptors("CCO")))
    assert d["MolWt"] == pytest.approx(46.069, abs=1e-3)
    assert d["NumHDonors"] == 1 and d["HeavyAtomCount"] == 3
    assert sum(v for k, v in d.items() if k.startswith("morgan")) > 0
    # the same molecule written from the other end and with atom maps stripped
    assert np.allclose(molecule_descriptors("OCC"), molecule_descriptors("CCO"), equal_nan=True)
    assert np.allclose(molecule_descriptors("c1ccccc1O"), molecule_descriptors("Oc1ccccc1"),
                       equal_nan=True)


def test_structure_descriptors_are_intensive_and_cell_independent():
    nacl = rock_salt()
    d = dict(zip(names("periodic"), structure_descriptors(nacl)))
    assert d["x(Na)"] == d["x(Cl)"] == 0.5 and d["x(K)"] == 0
    assert d["density (g/cm3)"] == pytest.approx(2.164, abs=2e-3)     # rock salt: 2.165
    assert d["volume per atom (A3)"] == pytest.approx(5.64 ** 3 / 8)
    assert d["space group"] == 225 and d["elements"] == 2
    assert d["mean Z"] == pytest.approx(14.0) and d["max Z"] == 17
    reference = structure_descriptors(nacl)
    supercell = nacl.copy()
    supercell.make_supercell([2, 1, 3])
    for other in (nacl.get_primitive_structure(), supercell):
        assert np.allclose(structure_descriptors(other), reference, equal_nan=True)


def test_bad_inputs_give_a_reason_not_an_exception():
    assert describe("smiles", "C1CC") == (None, "unparsable SMILES 'C1CC'")
    vector, reason = describe("cif", "data_x\n_cell_length_a 3\n")
    assert vector is None and "CIF" in reason
    vector, reason = describe("cif_file", "/nonexistent/x.cif")
    assert vector is None and "no such CIF file" in reason


def test_baseline_command_on_the_same_split_as_the_deq(cache_dir, tmp_path):
    out = tmp_path / "bl"
    r = run_cli("baseline", "--task", "polarity", "--limit", "600", "--out", out,
                "--cache-dir", cache_dir, "--no-progress", "--max-iter", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "descriptors of 600 polarity samples" in r.stdout
    report = json.loads((out / "baseline.json").read_text())
    assert report["split_sizes"] == {"train": 480, "val": 60, "test": 60}
    assert report["n_features"] == len(names("molecule")) and 1 <= report["rounds"] <= 60
    # descriptors predict polarity far better than always answering the larger class
    assert report["accuracy"] > report["majority_baseline"] + 0.15
    assert report["train_accuracy"] >= report["accuracy"]
    # the second run takes the descriptors from the cache; images need no descriptors
    again = run_cli("baseline", "--task", "polarity", "--limit", "600", "--out", out,
                    "--cache-dir", cache_dir, "--no-progress", "--max-iter", "60")
    assert again.returncode == 0 and "descriptors of" not in again.stdout
    assert json.loads((out / "baseline.json").read_text())["accuracy"] == report["accuracy"]
    images = run_cli("baseline", "--task", "polarity", "--limit", "600", "--features",
                     "images", "--out", tmp_path / "img", "--cache-dir", cache_dir,
                     "--no-progress", "--max-iter", "10")
    assert images.returncode == 0, images.stdout + images.stderr
    assert json.loads((tmp_path / "img" / "baseline.json").read_text())["n_features"] == 7 * 32 * 32


def test_baseline_on_crystals(cache_dir, tmp_path):
    from deq_petsc.science.data.tasks import default_crystals_csv
    if default_crystals_csv() is None:
        pytest.skip("no crystal data set beside the project")
    r = run_cli("baseline", "--task", "crystals", "--limit", "600", "--out", tmp_path,
                "--cache-dir", cache_dir, "--no-progress", "--max-iter", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "baseline.json").read_text())
    assert report["n_features"] == len(names("periodic"))
    assert report["accuracy"] > report["majority_baseline"] + 0.2


def test_descriptors_of_another_seed_are_rearranged_not_recomputed(tmp_path, monkeypatch):
    """A full build's descriptors for a second seed are the first's rows in the second's
    order (``load_task`` rearranges the images alike), equal to computing them anew."""
    import deq_petsc.science.baseline as baseline
    from deq_petsc.science.data import load_task
    csv = rock_salts_csv(tmp_path / "mine.csv")
    cache, other = tmp_path / "cache", tmp_path / "other"
    load = dict(csv=csv, progress=False)
    X0, _ = baseline.task_descriptors(load_task("crystals", cache_dir=cache, seed=0, **load),
                                      cache_dir=cache, progress=False)
    fresh = load_task("crystals", cache_dir=other, seed=1, **load)
    X1, _ = baseline.task_descriptors(fresh, cache_dir=other, progress=False)

    def no_descriptors(*args, **kwargs):
        raise AssertionError("computed again")
    monkeypatch.setattr(baseline, "descriptor_matrix", no_descriptors)
    data = load_task("crystals", cache_dir=cache, seed=1, **load)
    assert data.ids == fresh.ids
    X, got_names = baseline.task_descriptors(data, cache_dir=cache, progress=False)
    assert got_names == names("periodic") and not np.array_equal(X, X0, equal_nan=True)
    np.testing.assert_array_equal(X, X1)
    again, _ = baseline.task_descriptors(data, cache_dir=cache, progress=False)   # cached
    np.testing.assert_array_equal(again, X1)
    with pytest.raises(AssertionError, match="computed again"):      # a subset: computed
        baseline.task_descriptors(load_task("crystals", cache_dir=cache, seed=1, limit=7,
                                            **load), cache_dir=cache, progress=False)
