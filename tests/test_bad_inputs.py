"""Bad input, table-driven: every case ends in one named error (class and message), never
another exception; and property-based fuzzing of the readers (hypothesis).

In-process, so the table stays fast; the command line's one-line printing of these
errors is tested in test_cli.py, test_predict.py and test_run_folder.py.
"""

import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("pymatgen")

from deq_petsc.science.batch_predict import read_inputs  # noqa: E402
from deq_petsc.science.checkpoint import DEQCheckpointError, load_checkpoint  # noqa: E402
from deq_petsc.cli.main import build_parser, invalid_argument, split_petsc_args  # noqa: E402
from deq_petsc.science.data import PERIODIC_CHANNELS, cif_image, smiles_image  # noqa: E402
from deq_petsc.science.data.cache import DatasetCache  # noqa: E402
from deq_petsc.core.errors import DEQCacheError, DEQInputError, DEQOptionsError  # noqa: E402
from helpers import (NACL_CIF as NACL, cli_in_process, final_line, rock_salts_csv,  # noqa: E402
                     synthetic_build)


# -- SMILES ------------------------------------------------------------------------------
@pytest.mark.parametrize("smiles, message", [
    ("", "empty SMILES"),
    ("   ", "empty SMILES"),
    (None, "empty SMILES"),
    (42, "empty SMILES"),
    ("C1CC", "unparsable SMILES 'C1CC'"),
    ("xyz", "unparsable SMILES"),
    ("C(C)(C)(C)(C)C", "Explicit valence"),
    ("c1cccc1", "invalid SMILES 'c1cccc1': Can't kekulize"),
    ("[Xx]", "unparsable SMILES"),
    ("((C", "unparsable SMILES"),
    ("C==C", "unparsable SMILES"),
    ("C" * 12, "does not fit a 32x32 graph image"),          # 38 atoms with hydrogens
    (".".join(["[Na+].[Cl-]"] * 20), "molecule with 40 atoms does not fit"),
    # RDKit reads up to the first blank or unknown character and answers for that prefix
    ("C C(=O)O", "whitespace ' ' at position 2; a SMILES is one word of printable ASCII "
                 "(RDKit would read only 'C')"),
    ("CCÖ☃", "a non-ASCII character 'Ö' at position 3"),
    ("C\tC", "whitespace '\\t' at position 2"),
    ("  CC\nO", "whitespace '\\n' at position 5"),
    ("CC\x00O", "a control character '\\x00' at position 3"),
    ("C*C", "SMILES 'C*C': atom 2 is a dummy atom ('*'), not an element"),
    ("[*:1]CO", "atom 1 is a dummy atom"),
])
def test_bad_smiles(smiles, message):
    with pytest.raises(DEQInputError, match=re.escape(message)):
        smiles_image(smiles)


@pytest.mark.parametrize("smiles, outside", [
    ("CCO", ""),
    (" CCO\n", ""),                         # blanks around a SMILES are not part of it
    ("C[N+](C)(C)C", "net charge +1"),
    ("CC(=O)[O-]", "net charge -1"),
    ("[CH3]", "a radical (1 unpaired electron)"),
    ("CCO.O", "2 separate molecules"),
    ("[Na+].[Cl-]", "2 separate molecules"),
    ("[NH3+]CC(=O)[O-]", ""),                # a zwitterion is neutral, as QM9's are
])
def test_molecules_unlike_qm9_are_answered_but_flagged(smiles, outside):
    assert smiles_image(smiles).info["outside_domain"] == outside


# -- CIF ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("", "not a CIF"),
    ("not a cif", "not a CIF"),
    (None, "not a CIF"),
    ("data_x\n_cell_length_a 3\n", "CIF"),
    (NACL[: len(NACL) // 2], "CIF"),
    (NACL.replace("Na1 Na 0 0 0 1", "Na1 Na abc 0 0 1"), "unreadable CIF"),
    (NACL.replace("Na1 Na 0 0 0 1\n", "").replace("Cl1 Cl 0.5 0.5 0.5 1\n", ""), "CIF"),
    (NACL.replace("Na1 Na 0 0 0 1", "Na1 Na 0 0 0 0.5\nK1 K 0 0 0 0.5"), "disordered"),
    (NACL.replace("_cell_length_a 5.64", "_cell_length_a -5.64"),
     "invalid cell: _cell_length_a -5.64 \\(a length must be positive"),
    (NACL.replace("_cell_angle_beta 90", "_cell_angle_beta 190"), "invalid cell: _cell_angle_b"),
    (NACL.replace("_cell_length_b 5.64", "_cell_length_b ?"), "invalid cell: _cell_length_b ?"),
    (NACL.replace("Cl1 Cl", "Xx1 Xx"), "unknown species Xx: not an element"),
    (NACL.replace("_cell_length_b 5.64\n", ""),
     "unreadable CIF: no _cell_length_b \\(a cell needs all of a, b, c, alpha, beta and"),
    (NACL.replace("Na1 Na 0 0 0 1", "Na1 Na 0 0 0 1\nNa2 Na 0 0 0 1"),
     "the occupancies of one site sum to 2.0, above 1 \\(two atoms on the same site\\?\\)"),
    (NACL + NACL.replace("data_NaCl", "data_Fe").replace("Na1 Na 0 0 0 1\n", ""),
     "2 structures in one CIF \\(data_NaCl, data_Fe\\): give each its own file"),
    # two atoms 2.8 A apart in a 1000 A cell: pair counts over a uniform gas's overflow float16
    (NACL.replace("5.64", "1000").replace("Cl1 Cl 0.5 0.5 0.5", "Cl1 Cl 0.0028 0 0"),
     "cell too large: 2 atoms in 1e\\+09 A\\^3 \\(5e\\+08 A\\^3 per atom\\): an entry of its "
     "image \\(3.14e\\+06\\) overflows the float16"),
    (NACL + "#" * (16 << 20), "CIF of 16,777,"),
])
def test_bad_cifs(text, message):
    with pytest.raises(DEQInputError, match=message):
        cif_image(text)


def test_periodic_structures_beyond_the_atom_bound_are_refused_before_rendering(monkeypatch):
    from deq_petsc.science.data import graph_image
    monkeypatch.setattr(graph_image, "MAX_ATOMS", 1)
    with pytest.raises(DEQInputError, match="structure with 2 atoms: over the 1 a periodic "):
        cif_image(NACL)


def _never_blocks(call, seconds=10):
    """``call()``'s exception or result, failing the test if it does not return within
    ``seconds`` (opening a FIFO without a writer blocks for ever)."""
    import threading
    box = {}

    def run():
        try:
            box["result"] = call()
        except Exception as err:   # noqa: BLE001 - handed to the test
            box["error"] = err
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _special_files(tmp_path):
    """A folder, a FIFO, a sparse file over the CIF size bound and a missing name."""
    import os
    from deq_petsc.science.data.graph_image import MAX_CIF_BYTES
    (tmp_path / "folder.cif").mkdir()
    os.mkfifo(tmp_path / "fifo.cif")
    with open(tmp_path / "huge.cif", "wb") as fh:
        fh.truncate(MAX_CIF_BYTES + 1)          # sparse: no disk, no time
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("folder.cif", "{p}: a folder, not a file"),
    ("fifo.cif", "{p}: a FIFO (named pipe), not a file"),
    ("huge.cif", "{p}: a CIF of 16,777,217 bytes, over the 16,777,216 this reads"),
    ("missing.cif", "no such CIF file: {p}"),
])
def test_cif_files_that_are_not_read(tmp_path, name, message):
    from deq_petsc.science.data.graph_image import read_cif
    path = _special_files(tmp_path) / name
    with pytest.raises(DEQInputError) as err:
        _never_blocks(lambda: read_cif(path))
    assert str(err.value) == message.format(p=path)


# -- input lists for predict --input ---------------------------------------------------------
def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name, content, molecular, message", [
    ("missing.csv", None, True, "no such file or folder"),
    ("empty.csv", "", True, "no 'smiles' column"),
    ("header.csv", "smiles\n", True, "no rows"),
    ("nocolumn.csv", "name,formula\na,H2O\n", True, "no 'smiles' column \\(columns: name, "
                                                     "formula\\)"),
    ("empty.smi", "\n# only a comment\n\n", True, "no inputs in it"),
    ("folder", "dir", True, "a folder; molecules come in a CSV"),
    ("nocifs", "dir", False, "a folder without \\*.cif files"),
    ("empty.txt", "", False, "no inputs in it"),
    ("twice.csv", "smiles,name,SMILES\nCCO,x,c1ccccc1\n", True,
     "2 smiles columns \\(smiles, SMILES\\): keep one"),
    ("screen.csv", "smiles,name\nCCO,ethanol\n", False, "a CSV file, but this model reads "
                                                        "structures from CIFs: give a folder"),
    ("screen.smi", "CCO ethanol\n", False, "a SMI file, but this model reads structures"),
    ("nacl.cif", NACL, True, "a CIF, but this model classifies molecules: give SMILES"),
    ("fifo.csv", "fifo", True, "fifo.csv: a FIFO \\(named pipe\\), not a file"),
    ("fifo.txt", "fifo", False, "fifo.txt: a FIFO \\(named pipe\\), not a file"),
])
def test_bad_input_lists(tmp_path, name, content, molecular, message):
    import os
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)
    elif content is not None:
        _write(path, content)
    with pytest.raises(DEQInputError, match=message):
        _never_blocks(lambda: read_inputs(path, molecular))


@pytest.mark.parametrize("name, content, molecular, items", [
    # a byte-order mark, as Excel writes it, is not part of the first column's name
    ("bom.csv", "\ufeffsmiles,name\nCCO,ethanol\n".encode("utf-8"), True, [("ethanol", "CCO")]),
    ("bom.smi", "\ufeffCCO ethanol\n".encode("utf-8"), True, [("ethanol", "CCO")]),
    # a .smi name is everything after the first blank, tabs and spaces kept
    ("names.smi", "CCO\tethanol with tab\nN#N  di nitrogen \nO\n", True,
     [("ethanol with tab", "CCO"), ("di nitrogen", "N#N"), ("line 3", "O")]),
    # a CIF list's line is one path, blanks and all, relative to the list's folder
    ("list.txt", "with space.cif\n# a comment\n/abs/x.cif\n", False,
     [("with space.cif", "{tmp}/with space.cif"), ("/abs/x.cif", "/abs/x.cif")]),
])
def test_input_lists_are_read_exactly(tmp_path, name, content, molecular, items):
    path = _write(tmp_path / name, content)
    got = [(item.name, item.payload) for item in read_inputs(path, molecular)]
    assert got == [(n, p.format(tmp=tmp_path)) for n, p in items]


def test_a_batch_whose_solve_fails_is_solved_one_input_at_a_time(monkeypatch):
    """One input the model cannot solve (here: any entry above 1 'diverges') costs its row,
    not the batch's answers."""
    from types import SimpleNamespace

    from deq_petsc.science.batch_predict import _solve
    from deq_petsc.core.errors import DEQNonFiniteError

    def predict(model, images, batch_size):
        if (images.flatten(1).amax(1) > 1).any():
            raise DEQNonFiniteError("the fixed-point solve produced NaN/Inf")
        return torch.zeros(len(images), 2), (1.0, 1, 0.0, 0)
    monkeypatch.setattr("deq_petsc.science.inference.predict", predict)
    images = torch.zeros(4, 1, 2, 2)
    images[2] += 5
    rows = _solve(None, SimpleNamespace(name="classify", classes=("low", "high")), images, 256)
    assert [row.get("error", "") for row in rows] == [
        "", "", "the solve failed: the fixed-point solve produced NaN/Inf", ""]
    assert [row.get("label") for row in rows] == ["low", "low", None, "low"]
    assert rows[0]["inexact"] is False


# -- outputs safe to open ----------------------------------------------------------------
@pytest.mark.parametrize("value, written", [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
    ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
    ("+SUM(1+1)", "'+SUM(1+1)"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(1)", "'@SUM(1)"),
    ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"),
    ("-snes_type anderson", "'-snes_type anderson"),   # a spreadsheet reads it as a formula
    ("-0.5", "-0.5"),                  # text that is a number stays a number
    ("+1e-3", "+1e-3"),
    (-0.5, "-0.5"),
    (True, "True"),
    ("CCO", "CCO"),
    ("a=b", "a=b"),
])
def test_csv_cells_that_would_run_as_formulas_are_escaped(tmp_path, value, written):
    import csv
    from deq_petsc.process.atomic import write_csv
    write_csv(tmp_path / "out.csv", [{"name": value, "=col": 1}])
    with open(tmp_path / "out.csv", newline="") as fh:
        header, row = list(csv.reader(fh))
    assert header == ["name", "'=col"] and row == [written, "1"]


@pytest.mark.parametrize("ids, names", [
    (["mp-1", "ok_2.x"], ["polarity-mp-1.png", "polarity-ok_2.x.png"]),
    (["/../../../../../..W/ESCAPED0"], ["polarity-_.._.._.._.._.._..W_ESCAPED0.png"]),
    (["a/b", "a b", "a\nb"], ["polarity-a_b.png", "polarity-a_b-2.png", "polarity-a_b-3.png"]),
    (["..", "é"], ["polarity-...png", "polarity-_.png"]),
])
def test_png_names_from_record_ids_stay_inside_their_folder(tmp_path, ids, names):
    from deq_petsc.cli.commands import _png_path
    taken: set = set()
    paths = [_png_path(tmp_path, "polarity", i, taken) for i in ids]
    assert [p.name for p in paths] == names
    assert all(p.parent == tmp_path for p in paths)


def test_a_png_name_that_leads_out_through_a_link_is_refused(tmp_path):
    import os
    from deq_petsc.cli.commands import _png_path
    (tmp_path / "png").mkdir()
    os.symlink(tmp_path / "victim.png", tmp_path / "png" / "polarity-x.png")
    with pytest.raises(DEQInputError, match="polarity-x.png there leads outside the folder"):
        _png_path(tmp_path / "png", "polarity", "x", set())


def test_png_onto_a_file_is_refused_before_the_build(tmp_path):
    file = _write(tmp_path / "nacl.cif", NACL)
    args, _ = split_petsc_args(build_parser(), ["data", "--task", "polarity", "--png",
                                                str(file)])
    assert invalid_argument(args) == f"--png {file}: is a file, not a folder"
    args, _ = split_petsc_args(build_parser(), ["data", "--task", "polarity", "--png",
                                                f"{file}/png"])
    assert invalid_argument(args) == f"--png {file}/png: {file} is a file, not a folder"


# -- checkpoints -------------------------------------------------------------------------
class _NotPlain:
    pass


def _checkpoint_cases(tmp_path):
    real = tmp_path / "real.pt"
    torch.save({"format": "deq_petsc-checkpoint-1", "model": {"w": torch.ones(1000)}}, real)
    blob = real.read_bytes()
    cases = {
        "missing.pt": (None, "no checkpoint at"),
        "empty.pt": (b"", "corrupt or truncated"),
        "noise.pt": (np.random.default_rng(0).bytes(4096), "corrupt or truncated"),
        "text.pt": (json.dumps({"format": "deq_petsc-checkpoint-1"}).encode(),
                    "corrupt or truncated"),
        "truncated.pt": (blob[: len(blob) // 2], "corrupt or truncated"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            _write(tmp_path / name, content)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    cases["tensor.pt"] = (..., "is not a deq_petsc checkpoint")
    torch.save({"model": {}}, tmp_path / "other.pt")
    cases["other.pt"] = (..., "is not a deq_petsc checkpoint")
    torch.save({"format": "deq_petsc-checkpoint-1", "x": _NotPlain()}, tmp_path / "obj.pt")
    cases["obj.pt"] = (..., "refusing to load .* could run code")
    return cases


@pytest.mark.parametrize("name", ["missing.pt", "empty.pt", "noise.pt", "text.pt",
                                  "truncated.pt", "tensor.pt", "other.pt", "obj.pt"])
def test_bad_checkpoints(tmp_path, name):
    _, message = _checkpoint_cases(tmp_path)[name]
    with pytest.raises(DEQCheckpointError, match=message):
        load_checkpoint(tmp_path / name)


# -- cache entries -----------------------------------------------------------------------
def _cache_entry(tmp_path):
    cache = DatasetCache(tmp_path, required=("params",))
    entry = cache.store("t", "k", {"a": np.arange(5)}, {"params": {}})
    return cache, entry


@pytest.mark.parametrize("damage, message", [
    (lambda e: (e / "meta.json").write_text("null"), "not a cache record"),
    (lambda e: (e / "meta.json").write_text("[]"), "not a cache record"),
    (lambda e: (e / "meta.json").write_text('{"digests": {"a": "x"}}'), "not a cache record"),
    (lambda e: (e / "meta.json").write_text("{not json"), "unreadable"),
    (lambda e: (e / "a.npy").write_bytes(b"\x93NUMPY garbage"), "does not match its recorded"),
    (lambda e: (e / "a.npy").unlink(), "unreadable"),
    (lambda e: (e / "meta.json").unlink(), "unreadable"),
])
def test_bad_cache_entries(tmp_path, damage, message):
    cache, entry = _cache_entry(tmp_path)
    damage(entry)
    with pytest.raises(DEQCacheError, match=message):
        cache.load("t", "k")


# -- arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "polarity", "--limit", "-5"], "--limit -5: must be 0"),
    (["train", "--task", "polarity", "--epochs", "0"], "--epochs 0: must be at least 1"),
    (["train", "--task", "polarity", "--jobs", "0"], "--jobs 0: must be at least 1"),
    (["train", "--task", "polarity", "--gamma", "1.5"], "--gamma 1.5: must be in (0, 1)"),
    (["train", "--task", "polarity", "--spectral-target", "0"], "--spectral-target 0.0: must"),
    (["train", "--task", "polarity", "--jac-reg", "-1"], "--jac-reg -1.0: must be non-negative"),
    (["train", "--task", "polarity", "--spectral-steps", "0"], "--spectral-steps 0: must be at "),
    (["train", "--task", "polarity", "--tao-batch", "-1"], "--tao-batch -1: must be 0"),
    (["train", "--task", "polarity", "--depth", "0"], "--depth 0: must be at least 1"),
    (["train", "--task", "polarity", "--resume", "--overwrite"], "--resume and --overwrite"),
    (["train", "--task", "crystals", "--cell", "pair", "--no-elements"], "--cell pair needs --elements"),
    (["baseline", "--task", "polarity", "--max-iter", "0"], "--max-iter 0: must be at least 1"),
    (["data", "--task", "polarity", "--png-count", "-1"], "--png-count -1: must be non-negative"),
    (["compare", "--repeat", "0"], "--repeat 0: must be at least 1"),
    (["demo", "--time-budget", "-1"], "--time-budget -1.0: must be non-negative"),
    (["evaluate", "--checkpoint", "c", "--batch-size", "0"], "--batch-size 0: must be at "),
    (["solve", "--channels", "0"], "--channels 0: must be at least 1"),
])
def test_bad_arguments(argv, message):
    args, _ = split_petsc_args(build_parser(), argv)
    assert message in invalid_argument(args)


def test_no_elements_is_judged_by_the_cell_the_run_will_have():
    """train's default cell (pair) needs elements; a resumed run's cell is its checkpoint's
    unless --cell is typed, so re-running a --no-elements run's command with --resume is
    not refused for a cell it will not use."""
    from deq_petsc.cli.main import explicit_flags

    def problem(*argv):
        parser = build_parser()
        args, _ = split_petsc_args(parser, list(argv))
        args.explicit = explicit_flags(args.parser, list(argv))
        return invalid_argument(args)
    train = ("train", "--task", "polarity", "--no-elements")
    assert problem(*train).startswith("--cell pair needs --elements")
    assert problem(*train, "--resume") is None
    assert problem(*train, "--resume", "--cell", "pair").startswith("--cell pair needs")
    assert problem(*train, "--cell", "contractive") is None


def test_output_paths_of_the_wrong_kind(tmp_path):
    file = _write(tmp_path / "file", "x")
    args, _ = split_petsc_args(build_parser(), ["train", "--task", "polarity", "--out",
                                                str(file)])
    assert invalid_argument(args) == f"--out {file}: is a file, not a folder"
    args, _ = split_petsc_args(build_parser(), ["predict", "--checkpoint", "c", "--input",
                                                "x.csv", "--output", str(tmp_path)])
    assert invalid_argument(args) == f"--output {tmp_path}: is a folder, not a file"
    # a folder that cannot be made: found before any work, not after an epoch
    for argv, flag in ((["train", "--task", "polarity", "--out", f"{file}/run"], "--out"),
                       (["baseline", "--task", "polarity", "--out", f"{file}/a/b"], "--out"),
                       (["predict", "--checkpoint", "c", "--input", "x.csv", "--output",
                         f"{file}/p.csv"], "--output")):
        args, _ = split_petsc_args(build_parser(), argv)
        assert invalid_argument(args) == f"{flag} {argv[-1]}: {file} is a file, not a folder"


# -- evaluate: the checkpoint's own data and split, never its training samples ------------
SYNTH = ("--task", "polarity", "--cell", "contractive", "--width", "4", "--batch-size", "16",
         "--epochs", "1", "--no-progress")


@pytest.fixture(scope="module")
def synthetic_checkpoints(tmp_path_factory):
    """A model trained on all 40 samples of helpers.synthetic_build's source (seed 0), and
    the same checkpoint as one written before training ids were recorded."""
    out = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("deq_petsc.cli.commands._load_data", synthetic_build)
        from deq_petsc.cli.main import main
        assert main(["train", *SYNTH, "--out", str(out / "run")]) == 0
    state = load_checkpoint(out / "run" / "checkpoint.pt")
    assert len(state.pop("train_ids")) == 32
    from deq_petsc.science.checkpoint import save_checkpoint
    return {"new": out / "run" / "checkpoint.pt",
            "old": save_checkpoint(state, out / "before-ids.pt")}


@pytest.mark.parametrize("which, flags, message", [
    ("new", ("--limit", "20"), "2 of the 2 samples of this test split (first: "),
    ("new", ("--seed", "1"), "samples of this test split (first: "),
    ("new", ("--split-by", "scaffold"), "4 of the 4 samples of this test split"),
    ("old", ("--limit", "20", "--split", "val"), "2 of the 2 samples of this val split"),
    ("new", ("--limit", "5", "--split", "val"), "the val split of this polarity build is "
                                                "empty (5 samples in all)"),
    ("new", ("--split", "train", "--limit", "0", "--seed", "9"), None),   # asked for: scored
    ("new", (), None),
    ("old", (), None),
])
def test_evaluate_never_scores_training_samples_as_held_out(synthetic_checkpoints,
                                                            monkeypatch, capfd, which, flags,
                                                            message):
    monkeypatch.setattr("deq_petsc.cli.commands._load_data", synthetic_build)
    monkeypatch.setattr("deq_petsc.science.inference.require_current_images", lambda *a: None)
    checkpoint = synthetic_checkpoints[which]
    code, text = cli_in_process(capfd, "evaluate", "--checkpoint", checkpoint, *flags)
    assert "Traceback" not in text, text
    if message is None:
        assert code == 0, text
        assert f"{checkpoint} on the " in text
        return
    assert code == 2 and final_line(text).startswith("deq-petsc evaluate: error: "), text
    assert message in final_line(text)
    if "empty" not in message:
        assert final_line(text).endswith(f"were training samples of {checkpoint}: another "
                                          f"--limit, --seed, --split-by or --csv than training "
                                          f"draws another split; drop them to evaluate on the "
                                          f"checkpoint's own")


def test_evaluate_uses_the_csv_the_model_was_trained_on(tmp_path, monkeypatch, capfd):
    """evaluate of a --csv model scores that CSV's test split (not the default source), and
    refuses in one line when the CSV is gone or its content changed."""
    monkeypatch.setenv("DEQ_PETSC_CRYSTALS_CSV", str(tmp_path / "no-default-source.csv"))
    csv = rock_salts_csv(tmp_path / "salts.csv")
    out, cache = tmp_path / "run", tmp_path / "cache"
    code, text = cli_in_process(capfd, "train", "--task", "crystals", "--csv", csv, "--limit",
                                "0", "--epochs", "1", "--width", "4", "--cell", "contractive",
                                "--out", out, "--cache-dir", cache, "--no-progress")
    assert code == 0, text
    checkpoint = out / "checkpoint.pt"
    assert load_checkpoint(checkpoint)["train_config"]["csv"] == str(csv.resolve())
    evaluate = ("evaluate", "--checkpoint", checkpoint, "--cache-dir", cache)
    code, text = cli_in_process(capfd, *evaluate)
    assert code == 0 and "on the test split of crystals (1 samples)" in text, text
    csv.write_text(csv.read_text().replace("x-0", "x-00"))
    code, text = cli_in_process(capfd, *evaluate)
    assert code == 2 and final_line(text) == (
        f"deq-petsc evaluate: error: {csv.resolve()} changed since {checkpoint} was trained "
        f"on it (its content digest differs): give --csv with the training data")
    csv.unlink()
    code, text = cli_in_process(capfd, *evaluate)
    assert code == 2 and final_line(text) == (
        f"deq-petsc evaluate: error: {checkpoint} was trained on {csv.resolve()}, which is "
        f"gone: give --csv with that data")


# -- PETSc options -----------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"snes_type": "foo"}, "rejected by PETSc: Unable to find requested SNES type foo"),
    ({"snes_rtol": "abc"}, "rejected by PETSc: Input string abc has no numeric value"),
    ({"snes_anderson_m": "0"}, "-bad_snes_anderson_m 0: must be at least 1"),
    ({"snes_max_it": "x"}, "-bad_snes_max_it x: not an integer"),
    ({"deq_jvp": "sideways"}, "-bad_deq_jvp sideways: must be one of reverse, forward"),
    ({"deq_check_finite": "perhaps"}, "-bad_deq_check_finite perhaps: not a bool"),
])
def test_bad_solver_options(petsc_options, options, message):
    from deq_petsc import DEQSolver, FixedPointProblem
    from deq_petsc.science.models import TanhCell
    petsc_options({f"bad_{k}": v for k, v in options.items()})
    cell = TanhCell(4, contraction=0.5)
    with DEQSolver(prefix="bad_") as solver:
        with pytest.raises(DEQOptionsError) as err:
            solver.solve(FixedPointProblem(cell, torch.zeros(2, 4, dtype=torch.float64)))
    assert message in str(err.value)


@pytest.mark.parametrize("options, message", [
    ({"deq_method": "magic"}, "-bada_deq_method magic: must be one of ksp, snes, jfb, phantom"),
    ({"deq_phantom_steps": "0"}, "-bada_deq_phantom_steps 0: must be in [1, inf]"),
    ({"deq_phantom_damping": "2"}, "-bada_deq_phantom_damping 2.0: must be in"),
])
def test_bad_adjoint_options(petsc_options, options, message):
    from deq_petsc.core.adjoint import AdjointSolver
    petsc_options({f"bada_{k}": v for k, v in options.items()})
    with pytest.raises(DEQOptionsError) as err:
        AdjointSolver(prefix="bada_")
    assert message in str(err.value)


def test_bad_trainer_option(petsc_options):
    from deq_petsc.core.options_spec import TAO_TRAINER
    petsc_options({"badt_train_hessian": "bfgs"})
    with pytest.raises(DEQOptionsError, match="-badt_train_hessian bfgs: must be one of "
                                              "gauss-newton, exact"):
        TAO_TRAINER.read("badt_")


# -- fuzzing the readers -------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SMILES_ALPHABET = "CNOSPFIclBrn()[]=#@+-123456789.%/\\Hc "
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _image_or_named_error(render, text, shape):
    """``render(text)`` is a finite image of ``shape``, or raises DEQInputError (and
    nothing else)."""
    try:
        image = render(text).image
    except DEQInputError:
        return
    assert image.shape == shape and np.isfinite(image).all()


@FUZZ
@given(st.text(alphabet=SMILES_ALPHABET, max_size=40) | st.text(max_size=20))
def test_any_smiles_gives_an_image_or_a_named_error(text):
    _image_or_named_error(smiles_image, text, (7, 32, 32))


#: characters RDKit stops at (then answers for the prefix): blanks, non-ASCII, controls
FOREIGN = st.characters(whitelist_categories=("Zs", "Cc", "Zl", "Zp")) | \
    st.characters(min_codepoint=128)


@FUZZ
@given(st.sampled_from(["CCO", "c1ccccc1O", "CC(=O)O", "N#CC[NH3+]", "OCC(O)CO"]),
       st.integers(min_value=1), FOREIGN)
def test_a_smiles_with_a_foreign_character_inside_is_never_read_as_its_prefix(smiles, at,
                                                                              char):
    at = 1 + at % (len(smiles) - 1)          # strictly inside: blanks around are trimmed
    text = smiles[:at] + char + smiles[at:]
    with pytest.raises(DEQInputError, match=f"{re.escape(repr(char))} at position {at + 1};"):
        smiles_image(text)


@FUZZ
@given(st.lists(st.sampled_from(NACL.splitlines()), max_size=20).map("\n".join)
       | st.text(max_size=200)
       | st.tuples(st.integers(0, len(NACL)), st.text(FOREIGN, min_size=1, max_size=3)).map(
           lambda cut: NACL[:cut[0]] + cut[1] + NACL[cut[0]:]))
def test_any_cif_text_gives_an_image_or_a_named_error(text):
    _image_or_named_error(cif_image, text, (len(PERIODIC_CHANNELS), 16, 16))


@FUZZ
@given(st.binary(max_size=300) | st.text(alphabet="smile,name\n\"'C1O=# \t\ufeffÖ", max_size=120))
def test_any_input_list_reads_or_is_a_named_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "inputs.csv"
    _write(path, content)
    for molecular in (True, False):
        try:
            items = read_inputs(path, molecular)
        except DEQInputError:
            continue
        assert items and all(isinstance(i.payload, str) for i in items)


# -- our flags and PETSc's options, told apart before PETSc starts ------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "polarity", "-epochs", "2"], "-epochs: did you mean --epochs?"),
    (["train", "--task", "polarity", "-batch", "4"], "-batch: did you mean --batch-size?"),
    (["train", "--task", "polarity", "-batch_size=4"], "did you mean --batch-size?"),
    (["demo", "-limit", "100"], "-limit: did you mean --limit?"),
    (["train", "--task", "polarity", "--snes_type", "anderson"],
     "unrecognised arguments: --snes_type (PETSc options take one dash: -snes_type)"),
    (["train", "--task", "polarity", "-options_file"], "-options_file: give the file"),
    (["train", "--task", "polarity", "-options_file", "{tmp}/missing.txt"],
     "-options_file {tmp}/missing.txt: no such file"),
    (["train", "--task", "polarity", "-options_file", "{tmp}"], "not a regular file"),
    (["train", "--task", "polarity", "-options_file", "{tmp}/nodash.txt"],
     "-options_file {tmp}/nodash.txt, line 2: 'snes_type anderson' is not an option"),
    (["train", "--task", "polarity", "-options_file", "{tmp}/binary.txt"], "not an options file"),
])
def test_flags_and_petsc_options_mixed_up(tmp_path, capsys, argv, message):
    (tmp_path / "nodash.txt").write_text("# solver\nsnes_type anderson\n")
    (tmp_path / "binary.txt").write_bytes(b"-snes_type\0\x01\x02")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        split_petsc_args(build_parser(), argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message.format(tmp=tmp_path) in err[-1], err


def test_yaml_options_files_and_petsc_paths_are_left_to_petsc(tmp_path):
    """PETSc reads -options_file x.yaml as YAML and substitutes ${VAR} in paths: neither is
    refused by the check for PETSc's plain format."""
    yaml = tmp_path / "solver.yaml"
    yaml.write_text("snes_type: anderson\nsnes_anderson_m: 3\n")
    for path in (str(yaml), "${PETSC_DIR}/share/petsc/options"):
        args, petsc = split_petsc_args(build_parser(), ["solve", "-options_file", path])
        assert petsc == ["-options_file", path]


def test_a_cif_with_a_block_of_citations_is_one_structure():
    """A journal's data_global block (authors, no cell) is not a structure: the one
    structure is read, as pymatgen reads it."""
    from helpers import NACL_CIF
    journal = "data_global\n_journal_name_full 'Acta Cryst.'\n\n" + NACL_CIF
    assert cif_image(journal).info["formula"] == "NaCl"
    with pytest.raises(DEQInputError, match="2 structures in one CIF"):
        cif_image(NACL_CIF + "\n" + NACL_CIF.replace("data_NaCl", "data_NaCl2"))


def test_petsc_options_and_good_options_files_pass(tmp_path):
    good = tmp_path / "solver.opts"
    good.write_text("# the forward solver\n-snes_type anderson  # Anderson(m)\n\n"
                    "-snes_anderson_m 3\nalias -m -snes_anderson_m\n")
    argv = ["train", "--task", "polarity", "-help", "-snes_type", "anderson", "-log_view",
            "-options_file", str(good), "-snes_monitor"]
    args, petsc = split_petsc_args(build_parser(), argv)
    assert args.task == "polarity" and petsc == argv[3:]
