# Two commands do everything on a fresh machine:
#   make demo    set up the environment if needed, then run the main job
#   make test    set up the environment if needed, then run the test suite
# Pass extra arguments with ARGS, e.g.  make demo ARGS="--epochs 2 -anderson_snes_anderson_m 3"

ARGS ?=

.PHONY: env test demo bench-forward clean-env

env:
	bash ci/setup-env.sh

test:
	bash ci/test.sh $(ARGS)

demo:
	bash ci/demo.sh $(ARGS)

bench-forward: env
	.venv/bin/python benchmarks/bench_forward.py $(ARGS)

clean-env:
	rm -rf .venv
