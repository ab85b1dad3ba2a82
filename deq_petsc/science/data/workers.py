"""Map a function over many inputs in forked worker processes, with a progress bar.

Data builds (graph images, descriptors) parse thousands of SMILES or CIFs with
RDKit and pymatgen: pure-Python work that only processes parallelise. The
function must never raise for a bad input (it returns the reason instead),
because one bad CIF must not end the build of thirty thousand.
"""

from __future__ import annotations

import os
import warnings


def _worker_init(parent: int):
    """Forked workers must not keep the parent's PETSc signal handlers (a SIGTERM would
    be reported as a PETSc crash and answered with MPI_Abort; a SIGPIPE, once the parent
    is gone, with PETSc's "Broken Pipe" banner), nor outlive the parent: killed with -9,
    it never tells them to stop, and they would wait on its queue for ever."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGSEGV,
                signal.SIGFPE, signal.SIGBUS):
        signal.signal(sig, signal.SIG_DFL)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """SIGKILL to this process when ``parent`` dies (Linux's ``PR_SET_PDEATHSIG``); if it
    died before this was set, leave now. Elsewhere nothing: no such call."""
    import ctypes
    import ctypes.util
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:                 # orphaned between fork and prctl
        os._exit(1)


def _call_quietly(job):
    func, args = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args)


def map_in_workers(func, jobs: list[tuple], desc: str, n_jobs: int | None = None,
                   progress: bool = True, unit: str = "item") -> list:
    """``[func(*job) for job in jobs]``, in ``n_jobs`` processes (default: up to 2).

    ``func`` must be a module-level function (it is sent to the workers by name).
    Small inputs (fewer than 64 jobs) run in this process: forking costs more.
    """
    from deq_petsc.process.progress import progress as progress_bar

    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    bar = progress_bar(total=len(jobs), desc=desc, unit=unit, enabled=progress)
    work = [(func, job) for job in jobs]
    results = []
    if n_jobs > 1 and len(jobs) >= 64:
        import multiprocessing
        # fork, not spawn: spawn re-imports the caller's __main__, which breaks any
        # script without a main guard. The workers only run RDKit/pymatgen/numpy (no
        # torch, no MPI) and leave by os._exit, so no PETSc atexit handler runs there.
        pool = multiprocessing.get_context("fork").Pool(n_jobs, initializer=_worker_init,
                                                        initargs=(os.getpid(),))
        try:
            for res in pool.imap(_call_quietly, work, chunksize=16):
                results.append(res)
                bar.update()
            pool.close()           # let the workers finish and exit on their own ...
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()            # ... rather than be killed by Pool.__exit__'s SIGTERM
    else:
        for job in work:
            results.append(_call_quietly(job))
            bar.update()
    bar.close()
    return results
