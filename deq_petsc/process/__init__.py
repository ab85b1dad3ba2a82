"""What the process needs around every solve, below PETSc and torch's own work.

glibc's allocator for state-sized temporaries (:mod:`.allocator`), one BLAS thread
under PETSc's vector kernels (:mod:`.blas_threads`), the same CPU kernels on every
x86 machine (:mod:`.kernels`), C-level output held while a library speaks
(:mod:`.c_output`), files written whole or not at all (:mod:`.atomic`) and progress
bars (:mod:`.progress`). Nothing here imports PETSc, torch or another folder of the
package.
"""
