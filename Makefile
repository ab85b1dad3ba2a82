# Two commands do everything on a fresh machine:
#   make demo    set up the environment if needed, then run the main job
#   make test    set up the environment if needed, then run the test suite
#   make docs    rerun every command whose output the docs show and rewrite those blocks
#                (ARGS="--quick": only the few the tests rerun; --only TEXT, --check)
#   make test-blas  the suite on another OpenBLAS kernel than this CPU's (AVX's
#                Sandybridge, which neither AVX2 nor AVX-512 machines choose themselves):
#                a test that holds on one kernel's rounding only fails here; run it before
#                a submission (CI runs `make test` alone)
#   make models  train again the small models that ship in deq_petsc/science/shipped
#                (ci/ship-models.sh; TASKS="polarity" for one)
# Pass extra arguments with ARGS, e.g.  make demo ARGS="--epochs 2 -anderson_snes_anderson_m 3"

ARGS ?=

.PHONY: env test test-blas demo docs bench-forward clean-env models

env:
	bash ci/setup-env.sh

test:
	bash ci/test.sh $(ARGS)

test-blas:
	OPENBLAS_CORETYPE=$${BLAS_CORETYPE:-Sandybridge} bash ci/test.sh $(ARGS)

demo:
	bash ci/demo.sh $(ARGS)

models:
	bash ci/ship-models.sh

docs: env
	.venv/bin/python -m deq_petsc.core.options_spec > docs/options.md.tmp
	mv docs/options.md.tmp docs/options.md
	.venv/bin/python -m deq_petsc.cli.settings_doc > docs/settings.md.tmp
	mv docs/settings.md.tmp docs/settings.md
	.venv/bin/python docs/regenerate.py $(ARGS)

bench-forward: env
	.venv/bin/python benchmarks/bench_forward.py $(ARGS)

clean-env:
	rm -rf .venv
