"""Graph images and the three science tasks (small subsets; full builds are benchmarks)."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("pymatgen")

from pymatgen.core import Lattice, Structure  # noqa: E402
from rdkit import Chem  # noqa: E402

from deq_petsc.science.data import (PERIODIC_CHANNELS, cif_image, load_task, make_task,  # noqa: E402
                            mol_from_smiles, molecule_image, render_png, smiles_image,
                            structure_image)
from deq_petsc.science.data.tasks import default_crystals_csv  # noqa: E402
from deq_petsc.core.errors import DEQInputError  # noqa: E402
from helpers import rock_salts_csv, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deq_cache")


# -- molecules -------------------------------------------------------------------------
def test_ethanol_adjacency():
    g = smiles_image("CCO")
    bonds = g.image[0]
    assert g.image.shape == (7, 32, 32) and len(g.nodes) == 9
    assert sorted(g.nodes) == ["C", "C", "H", "H", "H", "H", "H", "H", "O"]
    assert np.array_equal(bonds, bonds.T)
    assert bonds.sum() / 2 == 8                      # C-C, C-O, O-H and five C-H
    degree = dict(zip(g.nodes, (bonds > 0).sum(axis=1)))
    assert degree["O"] == 2
    assert sorted((bonds > 0).sum(axis=1)[[i for i, s in enumerate(g.nodes) if s == "C"]]) == [4, 4]
    assert np.all(g.image[:, 9:, :] == 0) and np.all(g.image[:, :, 9:] == 0)   # padding
    z = np.diag(g.image[3])[:9] * 10
    assert sorted(np.round(z).astype(int)) == [1, 1, 1, 1, 1, 1, 6, 6, 8]
    o = g.nodes.index("O")
    assert g.image[4, o, o] == pytest.approx(-0.68)   # the MMFF94 charge of an alcohol's O


def test_benzene_adjacency_and_symmetry():
    g = smiles_image("c1ccccc1")
    bonds = g.image[0]
    carbons = [i for i, s in enumerate(g.nodes) if s == "C"]
    assert len(g.nodes) == 12 and len(carbons) == 6
    assert bonds.sum() / 2 == 6 * 1.5 + 6 * 1.0       # aromatic ring and six C-H
    ring = bonds[np.ix_(carbons, carbons)]
    assert np.all(ring.sum(axis=1) == 3.0)            # every C: two aromatic bonds
    assert np.array_equal(bonds, bonds.T)
    assert np.allclose(g.image[2], -g.image[2].T + 2 * np.diag(np.diag(g.image[2])))


@pytest.mark.parametrize("smiles", ["OCC", "C(O)C", "[H]OCC"])
def test_canonical_order_does_not_depend_on_the_input_numbering(smiles):
    assert np.array_equal(smiles_image(smiles).image, smiles_image("CCO").image)


def test_canonical_order_under_random_renumbering():
    mol = mol_from_smiles("CC(=O)Nc1ccc(O)cc1")          # paracetamol
    reference = molecule_image(mol).image
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = [int(i) for i in rng.permutation(mol.GetNumAtoms())]
        assert np.array_equal(molecule_image(Chem.RenumberAtoms(mol, perm)).image, reference)


# QM9 molecule 67, CC(O)C#N: B3LYP positions (A) as qm9pack writes them; DFT dipole 3.269 D
LACTONITRILE = ("['C','C','O','C','N','H','H','H','H','H']\n"
                "[[-0.0099246231,1.5495190809,0.0073219962],[0.007404854,0.0172201996,"
                "0.0503126972],[0.7208572187,-0.4963047879,1.158645827],[-1.3699509508,"
                "-0.5235592867,0.0089443174],[-2.4508157221,-0.9323313769,0.0071691167],"
                "[1.0189231373,1.9163044701,0.0272414869],[-0.5026148964,1.9096936186,"
                "-0.8999795105],[-0.5480042554,1.9537761129,0.8705366377],[0.5360284572,"
                "-0.3649419486,-0.8297094521],[0.2770264307,-0.2064453419,1.9642177334]]")
ACETYLENE = ("['C','C','H','H']\n"
             "[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],[1.6616385861,0.,1.]]")


def test_qm9_positions_are_read_as_python_writes_numbers():
    from deq_petsc.science.data.tasks import qm9_geometry
    elements, xyz = qm9_geometry(ACETYLENE)
    assert elements == ["C", "C", "H", "H"] and xyz.shape == (4, 3)
    assert xyz[0].tolist() == [0.5995394918, 0.0, 1.0]


def test_a_molecule_at_its_dft_positions_does_not_depend_on_numbering_or_orientation():
    from scipy.spatial.transform import Rotation

    from deq_petsc.science.data import xyz_image
    from deq_petsc.science.data.tasks import qm9_geometry
    elements, xyz = qm9_geometry(LACTONITRILE)
    g = xyz_image(elements, xyz)
    assert g.info["geometry"] == "given" and g.info["smiles"] == "C[C@@H](O)C#N"  # stereo from 3D
    rng = np.random.default_rng(1)
    for k in range(5):
        perm = rng.permutation(len(elements))
        moved = Rotation.random(random_state=k).apply(xyz[perm]) + rng.normal(size=3) * 5
        other = xyz_image([elements[i] for i in perm], moved)
        assert other.nodes == g.nodes
        np.testing.assert_allclose(other.image, g.image, atol=1e-5)
    # distance channel: 1/|r_a - r_b| of the positions given
    c, n = g.nodes.index("C"), g.nodes.index("N")
    assert g.image[5, c, n] == g.image[5, n, c] > 0
    i = [e for e in range(10) if elements[e] == "N"][0]
    d = {round(float(1 / np.linalg.norm(xyz[i] - xyz[j])), 4) for j in range(10) if j != i}
    assert {round(float(v), 4) for v in g.image[5, n, :10] if v > 0} == d
    # the dipole channel sums to the MMFF94 charges' dipole, |sum q_a (r_a - centroid)|
    q = np.diag(g.image[4])[:10].astype(float)
    assert abs(q.sum()) < 1e-6                                       # a neutral molecule
    assert np.trace(g.image[6]) * 4.8032 == pytest.approx(g.info["charge_dipole_debye"], rel=1e-5)
    assert 2.0 < g.info["charge_dipole_debye"] < 5.0                  # QM9 (DFT): 3.27 D


def test_a_smiles_gets_a_deterministic_conformer():
    first, again = smiles_image("OCC#N"), smiles_image("N#CCO")
    assert first.info["geometry"] == "ETKDG + MMFF94"
    assert np.array_equal(first.image, again.image)
    bonded = first.image[0] > 0
    lengths = 1 / first.image[5][bonded]
    assert 0.9 < lengths.min() and lengths.max() < 1.6                # bond lengths in A


def test_unreadable_positions_are_a_clear_error():
    from deq_petsc.science.data import xyz_image
    from deq_petsc.science.data.tasks import render
    with pytest.raises(DEQInputError, match="no neutral molecule fits"):      # a methyl radical
        xyz_image(["C", "H", "H", "H"], [[0, 0, 0], [1.09, 0, 0], [-.5, .9, 0], [-.5, -.9, 0]])
    with pytest.raises(DEQInputError, match="unknown element"):
        xyz_image(["Xx", "C"], [[0, 0, 0], [1.5, 0, 0]])
    image, reason = render("smiles", "CC", 32, "['C','C']\n[[0.,0.,0.],[1.5,0.,x]]")
    assert image is None and reason == "unreadable atom positions"


@pytest.mark.parametrize("bad, reason", [("C1CC", "SMILES"), ("C(C)(C)(C)(C)C", "valence"),
                                         ("", "empty"), ("not a molecule", "SMILES")])
def test_invalid_smiles_is_a_clear_error(bad, reason):
    with pytest.raises(DEQInputError, match=reason):
        smiles_image(bad)


def test_molecule_too_large_for_the_image():
    with pytest.raises(DEQInputError, match="does not fit"):
        smiles_image("C" * 12)                          # 12 C + 26 H = 38 atoms > 32


# -- periodic structures ---------------------------------------------------------------
def rock_salt():
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rock_salt_has_six_neighbours_per_atom():
    g = structure_image(rock_salt())
    assert g.nodes == ["Na", "Cl"]
    assert g.info["mean_coordination"] == 6.0
    # 4 Na x 6 Cl neighbours counted from each side, per atom of the 8-atom cell
    assert g.image[0, 0, 1] == g.image[0, 1, 0] == pytest.approx(3.0)
    assert g.image[0, 0, 0] == g.image[0, 1, 1] == 0.0   # Na-Na at 3.99 A is not a bond
    assert g.image[1, 0, 1] == pytest.approx(1 / 2.82, rel=1e-6)
    assert g.image[4, 0, 0] == pytest.approx(4 / 5.64 ** 3 * 10)


def test_rock_salt_shells_count_neighbours_against_a_uniform_gas():
    """Shell 2-3 A holds the 6 Cl around each Na (and back) at 2.82 A; 3-4 A the 12 Na-Na
    and Cl-Cl at 3.99 A, 4-5 A 8 Na-Cl at 4.88 A, 5-6 A 6 Na-Na at 5.64 A: counts per atom
    of the cell, over the uniform gas's count at the same density (8 atoms per 5.64^3
    A^3)."""
    g = structure_image(rock_salt())
    shell = {name: k for k, name in enumerate(g.channels)}
    density = 8 / 5.64 ** 3

    def uniform(lo, hi):
        return density * 4 / 3 * np.pi * (hi ** 3 - lo ** 3)

    assert not g.image[shell["shell 0-2 A"]].any()
    first = g.image[shell["shell 2-3 A"]]
    assert first[0, 1] == first[1, 0] == pytest.approx(4 * 6 / 8 / uniform(2, 3), rel=1e-6)
    assert first[0, 0] == first[1, 1] == 0.0
    for name, same, other, (lo, hi) in (("shell 3-4 A", 12, 0, (3, 4)),
                                        ("shell 4-5 A", 0, 8, (4, 5)),
                                        ("shell 5-6 A", 6, 0, (5, 6))):
        image = g.image[shell[name]]
        assert image[0, 0] == image[1, 1] == pytest.approx(4 * same / 8 / uniform(lo, hi),
                                                           rel=1e-6), name
        assert image[0, 1] == image[1, 0] == pytest.approx(4 * other / 8 / uniform(lo, hi),
                                                           rel=1e-6), name
    # far out, every atom's neighbours sit at 2.82 sqrt(n) A: in 12-14 A n = 19, 20, 21,
    # 22, 24 (24, 24, 48, 24, 24 integer vectors of squared length n; none for n = 23):
    # 144 per atom, about three quarters of the gas's count
    assert g.image[shell["shell 12-14 A"]].sum() == pytest.approx(144 / uniform(12, 14),
                                                                   rel=1e-6)


@pytest.mark.parametrize("spacegroup, species, coords, a, cn", [
    ("Fm-3m", ["Cu"], [[0, 0, 0]], 3.61, 12),
    ("Fd-3m", ["Si"], [[0, 0, 0]], 5.43, 4),
])
def test_coordination_of_simple_solids(spacegroup, species, coords, a, cn):
    s = Structure.from_spacegroup(spacegroup, Lattice.cubic(a), species, coords)
    assert structure_image(s).info["mean_coordination"] == cn


def test_species_image_does_not_depend_on_the_cell():
    s = rock_salt()
    reference = structure_image(s).image
    supercell = s.copy()
    supercell.make_supercell([2, 1, 3])
    assert np.allclose(structure_image(supercell).image, reference, atol=1e-6)
    assert np.allclose(structure_image(s.get_primitive_structure()).image, reference, atol=1e-6)


def test_invalid_cif_is_a_clear_error():
    text = rock_salt().to(fmt="cif")
    for bad in ("garbage", text[: len(text) // 3]):
        with pytest.raises(DEQInputError):
            cif_image(bad)


def test_render_png(tmp_path):
    path = render_png(smiles_image("CCO"), tmp_path / "ethanol.png", title="ethanol")
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


# -- tasks: labels from the source numbers ---------------------------------------------
def test_polarity_labels_hand_checked():
    task = make_task("polarity")
    assert task.params()["threshold_debye"] == pytest.approx(2.475, abs=0.01)   # QM9 median
    by_id = {r.id: r for r in task.records(None)}
    for qm9_index, smiles, dipole, label in [(1, "C", 0.0, 0), (3, "O", 1.8511, 0),
                                             (5, "C#N", 2.8937, 1), (8, "CO", 1.5258, 0)]:
        r = by_id[f"qm9-{qm9_index}"]
        assert (r.payload, r.target) == (smiles, pytest.approx(dipole))
        assert task.label(r.target) == label


def test_crystal_labels_hand_checked():
    if default_crystals_csv() is None:
        pytest.skip("shared/data/mp_crystals_bandgap.csv.gz not beside the project")
    task = make_task("crystals")
    by_id = {r.id: r for r in task.records(None)}
    for mp_id, gap, label in [("mp-149", 0.8527, "semiconductor"), ("mp-2534", 0.1839,
                              "semiconductor"), ("mp-22862", 5.1451, "insulator"),
                              ("mp-1143", 6.0436, "insulator"), ("mp-30", 0.0, "metal")]:
        assert by_id[mp_id].target == pytest.approx(gap)
        assert task.classes[task.label(by_id[mp_id].target)] == label
    nacl = cif_image(by_id["mp-22862"].payload)
    assert nacl.nodes == ["Na", "Cl"] and nacl.info["mean_coordination"] == 6.0


def test_mof_labels_hand_checked(cache_dir):
    task = make_task("mof-pore")
    by_id = {r.id: r for r in task.records(cache_dir)}
    for name, lcd, label in [("ACECIV_ion_b", 3.5991, 0), ("ACOCOM_clean", 24.60642, 2),
                             ("1499489-acs.cgd.6b01265_1499490_clean", 10.85017, 2)]:
        assert by_id[name].target == pytest.approx(lcd)
        assert task.label(by_id[name].target) == label
    assert task.label(5.0) == 1 and task.label(7.99) == 1 and task.label(8.0) == 2
    g = cif_image(open(by_id["ACECIV_ion_b"].payload).read())
    assert {"Pb", "K"} <= set(g.nodes)


# -- builds, splits and the cache -------------------------------------------------------
def test_build_split_balance_and_cache(cache_dir):
    d = load_task("polarity", limit=40, seed=3, cache_dir=cache_dir, progress=False)
    assert not d.from_cache and len(d.ids) == 40 and d.attempted == 40
    assert d.images.shape == (40, 7, 32, 32) and d.images.dtype.is_floating_point
    sizes = {s: len(d.indices(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 32, "val": 4, "test": 4}
    balance = d.class_balance()
    assert sum(sum(c.values()) for c in balance.values()) == 40
    assert "strongly polar" in d.summary()

    again = load_task("polarity", limit=40, seed=3, cache_dir=cache_dir, progress=False)
    assert again.from_cache and again.ids == d.ids
    assert np.array_equal(again.images.numpy(), d.images.numpy())
    assert np.array_equal(again.split_of, d.split_of)

    other = load_task("polarity", limit=40, seed=4, cache_dir=cache_dir, progress=False)
    assert not other.from_cache and other.ids != d.ids


def test_truncated_cache_file_is_rebuilt(cache_dir, capsys):
    d = load_task("polarity", limit=20, seed=5, cache_dir=cache_dir, progress=False)
    entry = [p for p in (cache_dir / "polarity").iterdir()
             if (p / "meta.json").exists() and d.cache_path.endswith(p.name)][0]
    images = entry / "images.npy"
    data = images.read_bytes()
    images.write_bytes(data[: len(data) // 2])
    rebuilt = load_task("polarity", limit=20, seed=5, cache_dir=cache_dir, progress=False)
    assert not rebuilt.from_cache
    assert "does not match its recorded digest" in capsys.readouterr().err
    assert np.array_equal(rebuilt.images.numpy(), d.images.numpy())
    assert load_task("polarity", limit=20, seed=5, cache_dir=cache_dir,
                     progress=False).from_cache


def test_source_fingerprints_follow_content_not_place_or_time(tmp_path):
    """A copy of shared/ elsewhere, or a touched file, keeps its cache entries; a changed
    byte makes new ones."""
    import os
    import shutil
    from deq_petsc.science.data.cache import fingerprint

    a = tmp_path / "a" / "crystals.csv.gz"
    a.parent.mkdir()
    a.write_bytes(b"material_id,band_gap,cif\n" * 50)
    b = tmp_path / "b" / "crystals.csv.gz"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    os.utime(b, ns=(1, 1))
    assert fingerprint(a) == fingerprint(b)
    assert set(fingerprint(a)) == {"name", "size", "blake2b"}
    b.write_bytes(a.read_bytes().replace(b"cif", b"CIF", 1))
    os.utime(b, ns=(2, 2))
    assert fingerprint(b)["size"] == fingerprint(a)["size"]
    assert fingerprint(b) != fingerprint(a)


def test_a_changed_parameter_is_a_different_entry(cache_dir):
    a = load_task("polarity", limit=20, seed=6, cache_dir=cache_dir, progress=False)
    b = load_task("polarity", limit=20, seed=6, cache_dir=cache_dir, progress=False,
                  threshold=1.0)
    assert not b.from_cache and a.cache_path != b.cache_path
    assert b.labels.sum() >= a.labels.sum()


def test_bad_inputs_in_a_users_csv_are_counted_not_fatal(cache_dir, tmp_path):
    good = rock_salt().to(fmt="cif")
    rows = [("x-1", 5.0, good), ("x-2", 0.0, "data_broken\n_cell_length_a 1\n"),
            ("x-3", 1.0, good), ("x-4", 2.0, "no cif at all"), ("x-5", 0.0, good),
            ("x-6", float("nan"), good), ("x-7", -0.5, good), ("x-8", "n/a", good),
            ("x-9", 1.0, None)]
    csv = tmp_path / "mine.csv.gz"
    with gzip.open(csv, "wt") as fh:
        pd.DataFrame(rows, columns=["material_id", "band_gap", "cif"]).to_csv(fh, index=False)
    d = load_task("crystals", csv=csv, cache_dir=cache_dir, progress=False, seed=0)
    assert d.attempted == 9 and len(d.ids) == 3
    skipped = dict(d.skipped)
    assert sorted(skipped) == ["x-2", "x-4", "x-6", "x-7", "x-8", "x-9"]
    assert all(reason for reason in skipped.values())
    # a missing, negative or non-numeric gap is never labelled (it was: insulator / metal)
    assert skipped["x-6"] == "PBE band gap (eV) nan is not a non-negative number"
    assert skipped["x-7"] == "PBE band gap (eV) -0.5 is not a non-negative number"
    assert skipped["x-8"] == "PBE band gap (eV) nan is not a non-negative number"
    assert skipped["x-9"] == "not a CIF (no _cell_length_a)"
    assert sorted(d.ids) == ["x-1", "x-3", "x-5"]
    labels = dict(zip(d.ids, d.labels.tolist()))
    assert labels == {"x-1": 2, "x-3": 1, "x-5": 0}
    assert "skipped 6 of 9" in d.summary()


def test_another_seed_of_a_full_build_is_rearranged_not_rendered(tmp_path, monkeypatch):
    """With every record used, --seed only reorders the records (and so the split): a
    second seed is the first's images rearranged, identical to rendering them anew."""
    import deq_petsc.science.data.tasks as tasks
    csv = rock_salts_csv(tmp_path / "mine.csv")           # two rows skipped, with reasons
    cache = tmp_path / "cache"
    first = load_task("crystals", csv=csv, cache_dir=cache, progress=False, seed=0)
    fresh = load_task("crystals", csv=csv, cache_dir=tmp_path / "other", progress=False,
                      seed=1)                             # rendered from scratch

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered again")
    monkeypatch.setattr(tasks, "map_in_workers", no_rendering)
    again = load_task("crystals", csv=csv, cache_dir=cache, progress=False, seed=1)
    assert again.ids == fresh.ids != first.ids and sorted(again.ids) == sorted(first.ids)
    for name in ("images", "labels"):
        assert torch.equal(getattr(again, name), getattr(fresh, name))
    assert np.array_equal(again.targets, fresh.targets)
    assert np.array_equal(again.split_of, fresh.split_of)
    assert [tuple(s) for s in again.skipped] == [tuple(s) for s in fresh.skipped]
    assert again.attempted == fresh.attempted == 10 and len(again.skipped) == 2
    assert again.params == fresh.params and again.params["seed"] == 1
    stored = load_task("crystals", csv=csv, cache_dir=cache, progress=False, seed=1)
    assert stored.from_cache and stored.ids == fresh.ids      # and now in the cache
    assert stored.params == fresh.params and [tuple(s) for s in stored.skipped] == \
        [tuple(s) for s in fresh.skipped]
    with pytest.raises(AssertionError, match="rendered again"):   # a subset is rendered
        load_task("crystals", csv=csv, cache_dir=cache, progress=False, seed=2, limit=10)


def test_users_csv_without_the_columns_is_rejected(cache_dir, tmp_path):
    csv = tmp_path / "wrong.csv"
    pd.DataFrame({"id": [1], "gap": [0.0]}).to_csv(csv, index=False)
    with pytest.raises(DEQInputError, match="missing columns"):
        load_task("crystals", csv=csv, cache_dir=cache_dir, progress=False)


@pytest.mark.parametrize("content", [b"\x00\x9f\x92\x96binary\xff" * 50, b"", b'a,"b\n1,2'])
def test_a_users_file_that_is_not_a_csv_is_one_named_error(cache_dir, tmp_path, content):
    csv = tmp_path / "x.csv"
    csv.write_bytes(content)
    with pytest.raises(DEQInputError, match=f"{csv}: (not a readable CSV|missing columns)"):
        load_task("crystals", csv=csv, cache_dir=cache_dir, progress=False)


def test_mof_subset_builds_in_parallel(cache_dir):
    d = load_task("mof-pore", limit=70, seed=0, cache_dir=cache_dir, progress=False, n_jobs=2)
    assert d.attempted == 70 and len(d.ids) + len(d.skipped) == 70
    assert d.images.shape[1:] == (len(PERIODIC_CHANNELS), 16, 16)
    assert set(d.labels.tolist()) <= {0, 1, 2}
    assert (d.images[:, 4].sum(dim=(1, 2)) > 0).all()       # every MOF has a density


@pytest.mark.parametrize("content", ["null", "[]", "42", '{"digests": []}', '{"digests": {}}'])
def test_a_cache_record_of_the_wrong_shape_is_rebuilt(tmp_path, content, capsys):
    first = load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False)
    meta = Path(first.cache_path) / "meta.json"
    meta.write_text(content)
    again = load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and "is not a cache record" in capsys.readouterr().err
    assert torch.equal(again.images, first.images)
    assert load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False).from_cache


def test_data_rebuild_flag_reaches_the_cache(tmp_path):
    args = ["data", "--task", "polarity", "--limit", "20", "--seed", "3", "--cache-dir", tmp_path]
    first = run_cli(*args)
    assert first.returncode == 0 and "(built:" in first.stdout, first.stdout + first.stderr
    assert "(cache:" in run_cli(*args).stdout
    again = run_cli(*args, "--rebuild")
    assert again.returncode == 0 and "(built:" in again.stdout, again.stdout + again.stderr


def test_a_cache_folder_that_cannot_be_written_costs_only_the_caching(tmp_path, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")             # (root ignores chmod: use a file instead)
    d = load_task("polarity", limit=20, seed=0, cache_dir=blocker / "cache", progress=False)
    assert len(d.ids) == 20 and d.cache_path == "not cached" and not d.from_cache
    assert "WARNING: could not write the cache entry" in capfd.readouterr().err
