"""``deq-petsc``: parsing and PETSc start-up (:mod:`.main`, whose ``main()`` is the
console script), one function per command (:mod:`.commands`). ``python -m deq_petsc.cli``
runs it as well."""
