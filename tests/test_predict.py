"""predict --input: many molecules or structures at once, bad rows reported, never fatal."""

import csv

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("pymatgen")

from helpers import cli_in_process, final_line, run_cli  # noqa: E402


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny polarity model and a tiny crystals model with element embeddings (one epoch
    each): predict rebuilds whichever injection the checkpoint trained."""
    root = tmp_path_factory.mktemp("predict")
    cache = root / "cache"
    models = {}
    for task in ("polarity", "crystals"):
        from deq_petsc.science.data.tasks import default_crystals_csv
        if task == "crystals" and default_crystals_csv() is None:
            continue
        r = run_cli("train", "--task", task, "--limit", "100", "--epochs", "1", "--width", "4",
                    "--out", root / task, "--cache-dir", cache, "--no-progress",
                    *(["--elements"] if task == "crystals" else []))
        assert r.returncode == 0, r.stdout + r.stderr
        models[task] = root / task / "checkpoint.pt"
    return models


def test_a_smiles_csv_gives_one_row_per_input_with_errors_named(trained, tmp_path):
    inputs = tmp_path / "screen.csv"
    inputs.write_text("id,SMILES\nethanol,CCO\nbroken,C1CC\nphenol,c1ccccc1O\nblank,\n"
                      "pentavalent,C(C)(C)(C)(C)C\nselenide,CC[Se]C\n")
    out = tmp_path / "pred.csv"
    r = run_cli("predict", "--checkpoint", trained["polarity"], "--input", inputs, "--output",
                out, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 inputs: 3 predicted, 3 could not be read (first: broken: unparsable SMILES" \
        in r.stdout
    assert "predicted classes: weakly polar" in r.stdout
    # QM9 has no selenium: the answer comes with a warning and the column says why
    assert ("WARNING: 1 inputs contain elements no training sample had (first: selenide: Se;"
            in r.stdout)
    rows = rows_of(out)
    assert [row["name"] for row in rows] == ["ethanol", "broken", "phenol", "blank",
                                             "pentavalent", "selenide"]
    assert [row["unseen_elements"] for row in rows] == ["", "", "", "", "", "Se"]
    for row in rows:
        if row["name"] in ("ethanol", "phenol", "selenide"):
            p = float(row["p(weakly polar)"]) + float(row["p(strongly polar)"])
            assert p == pytest.approx(1.0, abs=1e-5) and row["error"] == ""
            assert row["label"] in ("weakly polar", "strongly polar")
        else:
            assert row["label"] == "" and row["error"]
    assert "valence" in rows[4]["error"].lower()
    # one input alone answers as it does in a batch (same model, same solver)
    single = run_cli("predict", "--checkpoint", trained["polarity"], "--smiles", "CCO")
    assert single.returncode == 0 and rows[0]["label"] in single.stdout
    assert "WARNING" not in single.stdout
    outside = run_cli("predict", "--checkpoint", trained["polarity"], "--smiles", "CC[Se]C")
    assert outside.returncode == 0
    assert ("WARNING: Se: no training sample had this element; the answer is outside the "
            "model's domain") in outside.stdout


def test_a_smiles_list_and_inputs_that_cannot_be_read(trained, tmp_path):
    smi = tmp_path / "list.smi"
    smi.write_text("# a screening list\nCCO ethanol\n\nN#N\n")
    out = tmp_path / "pred.csv"
    r = run_cli("predict", "--checkpoint", trained["polarity"], "--input", smi, "--output", out,
                "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["name"] for row in rows_of(out)] == ["ethanol", "line 4"]
    no_column = tmp_path / "x.csv"
    no_column.write_text("name,formula\na,H2O\n")
    bad = run_cli("predict", "--checkpoint", trained["polarity"], "--input", no_column)
    assert bad.returncode == 2
    assert (bad.stdout + bad.stderr).strip().splitlines()[-1] == (
        f"deq-petsc predict: error: --input {no_column}: no 'smiles' column (columns: name, "
        f"formula)")
    assert "Traceback" not in bad.stdout + bad.stderr
    all_bad = tmp_path / "bad.smi"
    all_bad.write_text("C1CC\nxyz\n")
    none = run_cli("predict", "--checkpoint", trained["polarity"], "--input", all_bad,
                   "--output", tmp_path / "none.csv", "--no-progress")
    assert none.returncode == 1 and len(rows_of(tmp_path / "none.csv")) == 2


def test_a_folder_of_cifs(trained, tmp_path):
    if "crystals" not in trained:
        pytest.skip("no crystal data set beside the project")
    from pymatgen.core import Lattice, Structure
    folder = tmp_path / "cifs"
    folder.mkdir()
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                              [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(folder / "nacl.cif"))
    Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5],
                                                [0, 0.5, 0.5]]).to(filename=str(folder / "cu.cif"))
    (folder / "junk.cif").write_text("not a cif at all\n")
    out = tmp_path / "pred.csv"
    r = run_cli("predict", "--checkpoint", trained["crystals"], "--input", folder, "--output",
                out, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = rows_of(out)
    assert [row["name"] for row in rows] == ["cu.cif", "junk.cif", "nacl.cif"]
    assert rows[1]["error"] == "not a CIF (no _cell_length_a)" and rows[1]["label"] == ""
    assert {rows[0]["label"], rows[2]["label"]} <= {"metal", "semiconductor", "insulator"}
    wrong = run_cli("predict", "--checkpoint", trained["crystals"], "--input", tmp_path / "no")
    assert wrong.returncode == 2 and "no such file or folder" in wrong.stdout + wrong.stderr


def test_a_checkpoint_of_an_older_representation_is_refused_in_one_line(trained, tmp_path):
    from deq_petsc.science.checkpoint import load_checkpoint, save_checkpoint
    state = load_checkpoint(trained["polarity"])
    state["task"]["channels"] = ["bonds", "topology", "polarity", "element", "charge"]
    old = save_checkpoint(state, tmp_path / "old.pt")
    r = run_cli("predict", "--checkpoint", old, "--smiles", "CCO")
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1] == (
        f"deq-petsc predict: error: {old} was trained on 5-channel images (bonds, topology, "
        f"polarity, element, charge); this version draws polarity inputs with 7 (bonds, "
        f"topology, polarity, element, charge, distance, dipole): train the model again")


def test_a_solve_stopped_at_its_cap_is_said_on_every_path(trained, tmp_path):
    """A loaded model uses a capped solve's last iterate; single and batch answers say so."""
    capped = ["-snes_max_it", "1", "-snes_rtol", "1e-12"]
    single = run_cli("predict", "--checkpoint", trained["polarity"], "--smiles", "CCO", *capped)
    assert single.returncode == 0, single.stdout + single.stderr
    assert "WARNING: the forward solve stopped at the iteration limit: " in single.stdout
    assert "DIVERGED_MAX_IT after 1 its" in single.stdout
    inputs = tmp_path / "two.smi"
    inputs.write_text("CCO\nc1ccccc1O\n")
    out = tmp_path / "p.csv"
    batch = run_cli("predict", "--checkpoint", trained["polarity"], "--input", inputs,
                    "--output", out, "--no-progress", *capped)
    assert batch.returncode == 0, batch.stdout + batch.stderr
    assert "WARNING: 2 predictions come from solves stopped at the iteration limit" \
        in batch.stdout
    assert [row["inexact"] for row in rows_of(out)] == ["True", "True"]
    # the library says it too, as a warning a caller can catch or silence
    import torch
    from deq_petsc.core.errors import DEQCappedSolveWarning
    from deq_petsc.science.inference import load_model, predict
    model, _ = load_model(trained["polarity"], solver_options={"snes_max_it": 1,
                                                               "snes_rtol": 1e-12})
    try:
        from deq_petsc.science.data import smiles_image
        from deq_petsc.science.data.tasks import stored_image
        images = torch.stack([torch.from_numpy(stored_image(smiles_image(s)))
                              for s in ("CCO", "CC(=O)O", "c1ccccc1O")])
        with pytest.warns(DEQCappedSolveWarning, match="1 of 1 forward solves stopped"):
            _, (_, _, _, inexact) = predict(model, images)
        assert inexact == 1
    finally:
        model.destroy()


def _same_file_cases(tmp_path):
    """(--input, --output) pairs where writing the output would destroy an input."""
    import os
    inputs = tmp_path / "screen.csv"
    inputs.write_text("smiles,assay_ic50\nCCO,1.5\n")
    os.symlink(inputs, tmp_path / "link.csv")
    os.link(inputs, tmp_path / "hard.csv")
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "a.cif").write_text("data_a\n")
    return {"same": (inputs, inputs), "spelled": (inputs, cifs / ".." / "screen.csv"),
            "symlink": (inputs, tmp_path / "link.csv"), "hardlink": (inputs, tmp_path / "hard.csv"),
            "cif": (cifs, cifs / "a.cif")}


@pytest.mark.parametrize("case, message", [
    ("same", "is the --input file: writing the predictions would replace the inputs"),
    ("spelled", "is the --input file"),
    ("symlink", "is the --input file"),
    ("hardlink", "is the --input file"),
    ("cif", "is a CIF in the --input folder"),
])
def test_output_that_would_destroy_the_input_is_refused_before_any_work(tmp_path, capfd, case,
                                                                        message):
    inputs, output = _same_file_cases(tmp_path)[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, text = cli_in_process(capfd, "predict", "--checkpoint", tmp_path / "none.pt",
                                "--input", inputs, "--output", output)
    assert code == 2 and final_line(text).startswith(
        f"deq-petsc predict: error: --output {output}: {message}")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("what", [("--smiles", "CCO"), ("--cif", "x.cif")])
def test_output_without_input_is_refused_not_ignored(tmp_path, capfd, what):
    code, text = cli_in_process(capfd, "predict", "--checkpoint", tmp_path / "none.pt", *what,
                                "--output", tmp_path / "p.csv")
    assert code == 2 and final_line(text).startswith(
        f"deq-petsc predict: error: --output {tmp_path / 'p.csv'}: only --input writes a CSV")
    assert not (tmp_path / "p.csv").exists()


# -- inputs parsed exactly or refused, each bad input one row -------------------------------
def _crystal_files(tmp_path):
    """CIFs a crystals model must answer or name: a good one (under a name a spreadsheet
    would run), a 1000 A cell, an unknown species, two structures, a FIFO, a folder."""
    import os
    from helpers import NACL_CIF
    files = {"=1+2 with space.cif": NACL_CIF,
             "huge_cell.cif": NACL_CIF.replace("5.64", "1000").replace(
                 "Cl1 Cl 0.5 0.5 0.5", "Cl1 Cl 0.0028 0 0"),
             "unknown.cif": NACL_CIF.replace("Cl1 Cl", "Xx1 Xx"),
             "two_blocks.cif": NACL_CIF + NACL_CIF.replace("data_NaCl", "data_Fe")}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    os.mkfifo(tmp_path / "fifo.cif")
    (tmp_path / "folder.cif").mkdir()
    return tmp_path


@pytest.mark.parametrize("what, code, line", [
    (("--smiles", "CC(=O)[O-]"), 0, "WARNING: net charge -1: QM9, which polarity models "
     "learn from, holds neutral closed-shell single molecules; the answer is outside the "
     "model's domain"),
    (("--smiles", "[CH3]"), 0, "WARNING: a radical (1 unpaired electron): QM9, which"),
    (("--smiles", "CCO.O"), 0, "WARNING: 2 separate molecules: QM9, which"),
    (("--smiles", "C C(=O)O"), 2, "deq-petsc predict: error: SMILES 'C C(=O)O': whitespace ' ' "
     "at position 2; a SMILES is one word of printable ASCII (RDKit would read only 'C')"),
    (("--smiles", "CCÖ☃"), 2, "deq-petsc predict: error: SMILES 'CCÖ☃': a non-ASCII "
     "character 'Ö' at position 3"),
    (("--smiles", "C*C"), 2, "deq-petsc predict: error: SMILES 'C*C': atom 2 is a dummy atom"),
    (("--cif", "{tmp}/folder.cif"), 2, "deq-petsc predict: error: {tmp}/folder.cif: a folder, "
     "not a file"),
    (("--cif", "{tmp}/fifo.cif"), 2, "deq-petsc predict: error: {tmp}/fifo.cif: a FIFO (named "
     "pipe), not a file"),
    (("--cif", "{tmp}/huge_cell.cif"), 2, "deq-petsc predict: error: cell too large: 2 atoms "
     "in 1e+09 A^3"),
    (("--cif", "{tmp}/unknown.cif"), 2, "deq-petsc predict: error: unknown species Xx: not an "
     "element"),
    (("--cif", "{tmp}/two_blocks.cif"), 2, "deq-petsc predict: error: 2 structures in one CIF "
     "(data_NaCl, data_Fe): give each its own file"),
    (("--input", "{tmp}/screen.csv"), 2, "deq-petsc predict: error: --input {tmp}/screen.csv: "
     "a CSV file, but this model reads structures from CIFs"),
])
def test_one_input_is_read_exactly_refused_or_flagged(trained, tmp_path, capfd, what, code,
                                                      line):
    model = "polarity" if what[0] == "--smiles" else "crystals"
    if model not in trained:
        pytest.skip("no crystal data set beside the project")
    _crystal_files(tmp_path)
    (tmp_path / "screen.csv").write_text("smiles,name\nCCO,ethanol\n")
    what = [w.format(tmp=tmp_path) for w in what]
    got, text = cli_in_process(capfd, "predict", "--checkpoint", trained[model], *what,
                               "--no-progress")
    assert got == code and "Traceback" not in text, text
    assert final_line(text).startswith(line.format(tmp=tmp_path)), text


def test_a_batch_answers_every_input_it_can_and_names_the_others(trained, tmp_path, capfd):
    """A 1000 A cell, an unknown species, two structures, a FIFO: one row each, the good
    CIF (named by a list line with blanks) answered; no cell a spreadsheet would run."""
    if "crystals" not in trained:
        pytest.skip("no crystal data set beside the project")
    folder = tmp_path / "cifs"
    folder.mkdir()
    _crystal_files(folder)
    listing = folder / "list.txt"
    listing.write_text("".join(f"{name}\n" for name in (
        "=1+2 with space.cif", "huge_cell.cif", "unknown.cif", "two_blocks.cif", "fifo.cif")))
    out = tmp_path / "p.csv"
    code, text = cli_in_process(capfd, "predict", "--checkpoint", trained["crystals"], "--input",
                                listing, "--output", out, "--no-progress")
    assert code == 0 and "5 inputs: 1 predicted, 4 could not be read" in text, text
    rows = rows_of(out)
    assert rows[0]["name"] == "'=1+2 with space.cif" and rows[0]["error"] == ""
    assert rows[0]["label"] in ("metal", "semiconductor", "insulator")
    assert [row["error"].split(":")[0] for row in rows[1:]] == [
        "cell too large", "unknown species Xx", "2 structures in one CIF (data_NaCl, data_Fe)",
        f"{folder}/fifo.cif"]


def test_a_smiles_batch_flags_molecules_unlike_qm9_and_escapes_formulas(trained, tmp_path,
                                                                        capfd):
    inputs = tmp_path / "screen.csv"                   # as Excel saves it: a byte-order mark
    inputs.write_text('\ufeffsmiles,name\nCCO,"=HYPERLINK(""http://evil"")"\nCC(=O)[O-],'
                      'acetate\n[CH3],methyl\nC C(=O)O,stray space\n+SUM(1+1),@SUM(1)\n',
                      encoding="utf-8")
    out = tmp_path / "p.csv"
    code, text = cli_in_process(capfd, "predict", "--checkpoint", trained["polarity"],
                                "--input", inputs, "--output", out, "--no-progress")
    assert code == 0 and "5 inputs: 3 predicted, 2 could not be read" in text, text
    assert ("WARNING: 2 inputs are unlike the training molecules (first: acetate: net charge "
            "-1; column 'outside_domain')") in text
    rows = rows_of(out)
    assert [row["name"] for row in rows] == ["'=HYPERLINK(\"http://evil\")", "acetate",
                                             "methyl", "stray space", "'@SUM(1)"]
    assert [row["outside_domain"] for row in rows] == [
        "", "net charge -1", "a radical (1 unpaired electron)", "", ""]
    assert rows[3]["error"].startswith("SMILES 'C C(=O)O': whitespace ' ' at position 2")
    assert rows[4]["input"] == "'+SUM(1+1)" and rows[4]["label"] == ""
    assert float(rows[0]["p(weakly polar)"]) >= 0             # numbers stay numbers
