"""``python -m deq_petsc.cli.settings_doc > docs/settings.md``: the run settings' reference,
generated from their declarations (:mod:`deq_petsc.science.config`, the demo's
:class:`~deq_petsc.studies.demo.DemoConfig`); here, above both, so that it may read both."""

from deq_petsc.science.config import TrainConfig, markdown
from deq_petsc.studies.demo import DemoConfig

if __name__ == "__main__":
    print(markdown(TrainConfig, DemoConfig), end="")
