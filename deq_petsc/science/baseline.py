"""The honest reference: gradient boosting on descriptors, on exactly the DEQ's split.

A graph-image DEQ scientist is only worth its solver if it beats what a chemist
would try first. This fits scikit-learn's ``HistGradientBoostingClassifier``
(LightGBM's algorithm; ``HistGradientBoostingRegressor`` for ``objective="regress"``,
on the DFT number the labels come from) on the same train split of the same build
(same task, limit and seed, hence the same test molecules and materials), picks the
number of boosting rounds on the validation split (accuracy, or MAE), and reports the
test split with the same metrics as ``deq-petsc evaluate``. Two feature sets:

* ``descriptors``: :mod:`deq_petsc.science.data.descriptors` (RDKit 2D descriptors and
  Morgan counts; composition statistics and intensive structure numbers);
* ``images``: the DEQ's own graph images, flattened, which separates what the
  representation carries from what the model makes of it.

Descriptors are computed once per build and kept in the data cache beside the
images (content-addressed by the build's parameters and the descriptor
version). The fit itself runs on this process's cores (no MPI).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .data.cache import DatasetCache, cache_key
from .data.descriptors import DESCRIPTOR_VERSION, descriptor_matrix, names
from .data.tasks import (RESEED_FROM, TASKS, TaskData, full_build_ids, make_task,
                         reseed_source, rows_for)
from deq_petsc.core.errors import DEQCacheError, DEQInputError
from .metrics import (classification_report, confusion_matrix, format_regression,
                      format_report, regression_report)

FEATURE_SETS = ("descriptors", "images")
BASELINE_OBJECTIVES = ("classify", "regress")


@dataclass
class BaselineConfig:
    features: str = "descriptors"
    objective: str = "classify"     # or "regress": the task's DFT target, MAE in its units
    max_iter: int = 500             # boosting rounds at most; the validation split picks
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    seed: int = 0
    cache_dir: str | None = None
    jobs: int | None = None         # descriptor processes
    progress: bool = True


def task_descriptors(data: TaskData, cache_dir=None, jobs=None, progress=True,
                     log=print) -> tuple[np.ndarray, list[str]]:
    """The descriptor matrix of every sample of ``data`` (rows in ``data.ids`` order)."""
    kind = TASKS[data.task].kind
    cache = DatasetCache(cache_dir, required=("names", "failed"))
    key = cache_key({"descriptors": DESCRIPTOR_VERSION, "data": data.params})
    entry = cache.load(f"{data.task}-descriptors", key)
    if entry is not None and entry[1]["names"] == names(kind):
        return entry[0]["X"], entry[1]["names"]
    task = make_task(data.task, **data.task_options)
    records = task.records(cache.root)
    reseeded = _descriptors_of_another_seed(data, cache, kind, records)
    if reseeded is not None:
        X, failed = reseeded
        cache.store_or_warn(f"{data.task}-descriptors", key, {"X": X},
                            {"names": names(kind), "failed": failed})
        return X, names(kind)
    payload = {r.id: r.payload for r in records}
    missing = [i for i in data.ids if i not in payload]
    if missing:
        raise DEQInputError(f"{len(missing)} samples of the build are no longer in the "
                            f"task's source (first: {missing[0]}): rebuild the data")
    start = time.perf_counter()
    X, failed = descriptor_matrix(task.payload, [payload[i] for i in data.ids], n_jobs=jobs,
                                  progress=progress)
    log(f"descriptors of {len(data.ids)} {data.task} samples: {X.shape[1]} each, "
        f"{time.perf_counter() - start:.1f} s; {len(failed)} failed"
        + (f" (first: {data.ids[failed[0][0]]}: {failed[0][1]})" if failed else ""))
    cache.store_or_warn(f"{data.task}-descriptors", key, {"X": X},
                        {"names": names(kind),
                         "failed": [(data.ids[r], why) for r, why in failed]})
    return X, names(kind)


def _descriptors_of_another_seed(data: TaskData, cache: DatasetCache, kind: str, records):
    """``(X, failed)`` of a full build (``limit`` None, random split) rearranged from the
    cached descriptors of the same build with seed ``RESEED_FROM``, whose images
    ``load_task`` rearranges in the same way; ``None`` if there are none. (The MOFs'
    descriptors take 13 minutes on 2 cores; a second seed is a study of the spread of a
    result, not new frameworks.)"""
    source = reseed_source(data.params)
    if source is None:
        return None
    key = cache_key({"descriptors": DESCRIPTOR_VERSION, "data": source})
    try:
        entry = cache.load(f"{data.task}-descriptors", key)
    except DEQCacheError:
        return None
    if entry is None or entry[1]["names"] != names(kind):
        return None
    skipped = {str(i) for i, _ in data.skipped}
    source_ids = [i for i in full_build_ids(records, RESEED_FROM) if i not in skipped]
    take = rows_for(source_ids, data.ids)
    X = entry[0]["X"]
    if take is None or len(source_ids) != len(X):
        return None
    try:
        why = {str(i): str(r) for i, r in entry[1]["failed"]}
    except (TypeError, ValueError):
        return None
    return X[take], [(i, why[i]) for i in data.ids if i in why]     # in this build's order


def _features(cfg: BaselineConfig, data: TaskData, log) -> np.ndarray:
    if cfg.features == "descriptors":
        return task_descriptors(data, cfg.cache_dir, cfg.jobs, cfg.progress, log)[0]
    if cfg.features == "images":
        return data.images.reshape(len(data.ids), -1).numpy()
    raise DEQInputError(f"features must be one of {FEATURE_SETS}, got {cfg.features!r}")


def run_baseline(cfg: BaselineConfig, data: TaskData, log=print, X=None) -> dict:
    """Fit on train, choose the rounds on val, report test; a plain-data report. ``X``
    (rows in ``data.ids`` order) replaces the features of ``cfg.features``, for a
    benchmark that asks what other numbers carry, with the same fit and split."""
    try:
        from sklearn.ensemble import (HistGradientBoostingClassifier,
                                      HistGradientBoostingRegressor)
    except ImportError:
        raise ImportError("the baseline needs scikit-learn: pip install -e .[data]") from None
    if cfg.objective not in BASELINE_OBJECTIVES:
        raise DEQInputError(f"objective must be one of {BASELINE_OBJECTIVES}, got "
                            f"{cfg.objective!r}")
    regress = cfg.objective == "regress"
    X = _features(cfg, data, log) if X is None else np.asarray(X)
    y = np.asarray(data.targets, np.float64) if regress else data.labels.numpy()
    split = {s: data.indices(s) for s in ("train", "val", "test")}
    if not regress and len(np.unique(y[split["train"]])) < 2:
        raise DEQInputError("the training split holds a single class: a larger --limit")
    estimator = HistGradientBoostingRegressor if regress else HistGradientBoostingClassifier
    start = time.perf_counter()
    model = estimator(max_iter=cfg.max_iter, learning_rate=cfg.learning_rate,
                      max_leaf_nodes=cfg.max_leaf_nodes, early_stopping=False,
                      random_state=cfg.seed)
    model.fit(X[split["train"]], y[split["train"]])
    fit_seconds = time.perf_counter() - start

    def score(p, true):                 # higher is better: accuracy, or minus the MAE
        return float(-np.abs(p - true).mean()) if regress else float((p == true).mean())

    # the validation split chooses the number of rounds (no refit: staged predictions)
    if len(split["val"]):
        val_score = [score(p, y[split["val"]]) for p in model.staged_predict(X[split["val"]])]
        rounds = int(np.argmax(val_score)) + 1
    else:
        rounds = model.n_iter_
        val_score = [float("nan")] * rounds

    def predict(idx):
        for k, p in enumerate(model.staged_predict(X[idx]), start=1):
            if k == rounds:
                return p
        return model.predict(X[idx])

    common = dict(task=data.task, model=estimator.__name__, objective=cfg.objective,
                  features=cfg.features, n_features=int(X.shape[1]), rounds=rounds,
                  fit_seconds=fit_seconds,
                  split_sizes={s: int(len(i)) for s, i in split.items()}, data=data.params,
                  config=asdict(cfg))
    if regress:
        report = regression_report(predict(split["test"]), y[split["test"]],
                                   float(y[split["train"]].mean()))
        report.update(common, target=TASKS[data.task].target_name,
                      val_mae=-val_score[rounds - 1],
                      train_mae=-score(predict(split["train"]), y[split["train"]]))
        return report
    cm = confusion_matrix(y[split["test"]], predict(split["test"]), len(data.classes))
    report = classification_report(cm, data.classes)
    report.update(common, val_accuracy=val_score[rounds - 1],
                  train_accuracy=score(predict(split["train"]), y[split["train"]]),
                  confusion=cm.tolist())
    return report


def format_baseline(report: dict) -> str:
    head = (f"gradient boosting on {report['features']} ({report['n_features']} features, "
            f"{report['rounds']} rounds chosen on val: ")
    if report.get("objective") == "regress":
        return (head + f"val MAE {report['val_mae']:.4f}, train {report['train_mae']:.4f}; "
                f"fit {report['fit_seconds']:.1f} s)\n" + format_regression(report))
    return (head + f"val accuracy {report['val_accuracy']:.4f}, train "
            f"{report['train_accuracy']:.4f}; fit {report['fit_seconds']:.1f} s)\n"
            + format_report(report))
