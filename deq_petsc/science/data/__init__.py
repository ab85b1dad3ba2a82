"""Graph-image data sets for the science tasks (needs the ``data`` extra).

    from deq_petsc.science.data import load_task
    data = load_task("polarity", limit=2000, seed=0)
    X_train, y_train = data.split("train")
"""

from .graph_image import (MOLECULE_CHANNELS, PERIODIC_CHANNELS, GraphImage, cif_image,
                          molecule_image, mol_from_smiles, render_png, smiles_image,
                          structure_from_cif, structure_image, xyz_image)
from .tasks import SPLITS, TASKS, TaskData, load_task, make_task

__all__ = ["GraphImage", "MOLECULE_CHANNELS", "PERIODIC_CHANNELS", "SPLITS", "TASKS",
           "TaskData", "cif_image", "load_task", "make_task", "molecule_image",
           "mol_from_smiles", "render_png", "smiles_image", "structure_from_cif",
           "structure_image", "xyz_image"]
