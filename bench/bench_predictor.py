"""In-process benchmark: the fitted pipeline against the compiled model (titanic_web/compiled.py).

    .venv/bin/python bench/bench_predictor.py [--model-dir DIR] [--rounds N] [--alternatives]

Passengers are validated rows of model/data/test.csv and train.csv, drawn with a
fixed seed, as dicts of every schema field (what Predictor.predict receives).
For 1, 100 and 10,000 passengers it times, per call:

  pipeline, DataFrame   pipeline.predict_proba(frame), the raw frame built beforehand
  pipeline, dicts       pipeline.predict_proba(features.raw_frame(passengers))
  compiled              compiled.predict(passengers): probabilities and engineered rows
  compiled + records    the same and the feature-store dicts (features.to_record)

Each figure is timeit over enough calls to take >= 0.2 s, on this process's CPU
time by default (--clock wall for perf_counter: other load on the machine then
inflates the figures); variants are interleaved
within a round, figures are medians over rounds, and ratios are taken within each
round (same moment, same machine noise) and their median reported. Thread pools are
pinned to one thread, as in a gunicorn worker. The targets are printed as met / NOT
met lines: timings are never assertions. --alternatives also times the ways of
evaluating the trees that compiled.py chose between.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from titanic_web import compiled as compiled_module  # noqa: E402
from titanic_web import csvio, features, registry  # noqa: E402
from titanic_web.compiled import compile_pipeline  # noqa: E402
from titanic_web.predictor import Predictor  # noqa: E402

SIZES = (1, 100, 10_000)
SEED = 0
TARGET_ONE = 100.0  # 1 passenger: at least this many times faster than the pipeline on a DataFrame
TARGET_MANY = 1.8  # 10,000 passengers: at least this many times faster per row


def load_passengers() -> list[dict[str, Any]]:
    """Validated passengers of test.csv and train.csv, in file order."""
    rows: list[dict[str, Any]] = []
    for name in ("test.csv", "train.csv"):
        text = csvio.decode((PROJECT / "model" / "data" / name).read_bytes())
        rows += csvio.read_passengers(text, max_rows=sys.maxsize)
    return rows


CLOCK: Callable[[], float] = time.process_time


def per_call(fn: Callable[[], Any]) -> float:
    """Seconds per call: timeit over enough calls to take at least 0.2 s."""
    timer = timeit.Timer(fn, timer=CLOCK)
    number, _ = timer.autorange()
    return timer.timeit(number) / number


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:9.2f} ms"
    return f"{seconds * 1e6:9.1f} us"


def main_timings(predictor: Predictor, model: compiled_module.CompiledModel, passengers: list, rounds: int) -> None:
    pipeline = predictor.pipeline
    rng = random.Random(SEED)
    batches = {n: [rng.choice(passengers) for _ in range(n)] for n in SIZES}
    frames = {n: features.raw_frame(batch) for n, batch in batches.items()}

    big = batches[SIZES[-1]]
    expected = pipeline.predict_proba(features.raw_frame(big))[:, 1]
    got = model.predict(big).probabilities
    single = np.array([model.predict([p]).probabilities[0] for p in big[:500]])
    print(
        f"agreement on {len(big)} passengers: max |compiled - pipeline| = {np.abs(got - expected).max():.3g}"
        f" (bit-identical: {np.array_equal(got, expected)}); one at a time, first 500:"
        f" {np.abs(single - expected[:500]).max():.3g}"
    )

    variants: dict[str, Callable[[int], Callable[[], Any]]] = {
        "pipeline, DataFrame": lambda n: lambda: pipeline.predict_proba(frames[n]),
        "pipeline, dicts": lambda n: lambda: pipeline.predict_proba(features.raw_frame(batches[n])),
        "compiled": lambda n: lambda: model.predict(batches[n]),
        "compiled + records": lambda n: lambda: [features.to_record(r) for r in model.predict(batches[n]).rows],
    }
    times: dict[tuple[int, str], list[float]] = {}
    ratios: dict[tuple[int, str], list[float]] = {}
    for round_ in range(rounds):
        for n in SIZES:
            now = {name: per_call(make(n)) for name, make in variants.items()}
            for name, seconds in now.items():
                times.setdefault((n, name), []).append(seconds)
            for base in ("pipeline, DataFrame", "pipeline, dicts"):
                for fast in ("compiled", "compiled + records"):
                    ratios.setdefault((n, f"{base} / {fast}"), []).append(now[base] / now[fast])
        print(f"  round {round_ + 1}/{rounds} done", file=sys.stderr)

    print(
        f"\nmedians of {rounds} rounds, {'CPU' if CLOCK is time.process_time else 'wall'} time"
        " (per call; per passenger in brackets)"
    )
    for n in SIZES:
        print(f"\n{n} passenger(s)")
        for name in variants:
            seconds = statistics.median(times[(n, name)])
            print(f"  {name:<22}{fmt(seconds)}   [{fmt(seconds / n).strip()}]")
        for key, values in ratios.items():
            if key[0] == n:
                print(f"  ratio {key[1]:<44}{statistics.median(values):8.1f}x")

    one_rounds = ratios[(1, "pipeline, DataFrame / compiled")]
    many_rounds = ratios[(SIZES[-1], "pipeline, DataFrame / compiled")]
    one, many = statistics.median(one_rounds), statistics.median(many_rounds)
    print()
    print(
        f"target 1 passenger   >= {TARGET_ONE:.0f}x faster than the pipeline on a DataFrame: "
        f"{one:.1f}x (rounds {min(one_rounds):.1f}-{max(one_rounds):.1f}x), "
        f"{'met' if one >= TARGET_ONE else 'NOT met'}"
    )
    print(
        f"target {SIZES[-1]:,} passengers >= {TARGET_MANY}x faster per row: "
        f"{many:.2f}x (rounds {min(many_rounds):.2f}-{max(many_rounds):.2f}x), "
        f"{'met' if many >= TARGET_MANY else 'NOT met'}"
    )


def python_walk(estimator: Any, init: float) -> Callable[[list[float]], float]:
    """A pure-Python walk of boosted trees over one float32-rounded row (an alternative)."""
    rate = estimator.learning_rate
    trees = [
        (
            t.feature.tolist(),
            t.threshold.tolist(),
            t.children_left.tolist(),
            t.children_right.tolist(),
            (rate * t.value[:, 0, 0]).tolist(),
        )
        for t in (e.tree_ for e in estimator.estimators_[:, 0])
    ]

    def raw(row: list[float]) -> float:
        total = init
        for feature, threshold, left, right, value in trees:
            node = 0
            while left[node] != -1:
                node = left[node] if row[feature[node]] <= threshold[node] else right[node]
            total += value[node]
        return total

    return raw


def alternatives(predictor: Predictor, model: compiled_module.CompiledModel, passengers: list, rounds: int) -> None:
    estimator = predictor.pipeline[-1]
    if not isinstance(model.estimator, (compiled_module._Boosting, compiled_module._Forest)):
        print("\n(--alternatives compares tree evaluations; this model has no trees)")
        return
    trees = model.estimator.trees
    tree_objects = [e.tree_ for e in np.ravel(estimator.estimators_)]
    if isinstance(model.estimator, compiled_module._Boosting):
        init = compiled_module._boosting_init(estimator)
        values = [estimator.learning_rate * t.value[:, 0, 0] for t in tree_objects]
        make = lambda table: compiled_module._Trees(  # noqa: E731
            tree_objects, values, start=init, divisor=None, table=table
        )
    else:
        init = None
        values = [t.value[:, 0, 1] for t in tree_objects]
        make = lambda table: compiled_module._Trees(  # noqa: E731
            tree_objects, values, start=0.0, divisor=float(len(tree_objects)), table=table
        )
    walk = make(False)
    rng = random.Random(SEED + 1)
    print(
        f"\nalternatives: {trees.n_trees} trees of depth <= {trees.depth}; medians of {rounds} rounds"
        f" (compiled.py: tables when depth <= {compiled_module.TABLE_DEPTH}, row-wise up to"
        f" {compiled_module.ROW_WISE} rows, per-tree loop from {compiled_module.TREE_LOOP}; else the level walk)"
    )
    for n in (1, 2, 4, 16, 100, 1000, 2000, 10_000):  # 2,000: a batch chunk (BATCH_CHUNK_ROWS)
        XT = model._inputs_t(model.engineer([rng.choice(passengers) for _ in range(n)]))
        X = np.ascontiguousarray(XT.T)
        options: dict[str, Callable[[], Any]] = {}
        if trees.table:
            options["tables row-wise"] = lambda: _forced(trees, XT, row_wise=10**9, tree_loop=10**9)
            options["tables vectorised"] = lambda: _forced(trees, XT, row_wise=0, tree_loop=10**9)
            options["tables per-tree loop"] = lambda: _forced(trees, XT, row_wise=0, tree_loop=0)
        options["level walk"] = lambda: walk.total(XT)
        options["sklearn on compiled inputs"] = lambda: estimator.predict_proba(X)
        if n == 1 and init is not None:
            walker = python_walk(estimator, init)
            row = X.astype(np.float32)[0].tolist()
            options["pure-Python walk"] = lambda: walker(row)
        figures: dict[str, list[float]] = {}
        for _ in range(rounds):
            for name, fn in options.items():
                figures.setdefault(name, []).append(per_call(fn))
        line = "; ".join(f"{name} {fmt(statistics.median(v)).strip()}" for name, v in figures.items())
        print(f"  {n:>5} row(s): {line}")


def _forced(trees: Any, XT: np.ndarray, *, row_wise: int, tree_loop: int) -> np.ndarray:
    """Evaluate with the given size thresholds, to time each table layout at any size."""
    saved = compiled_module.ROW_WISE, compiled_module.TREE_LOOP
    compiled_module.ROW_WISE, compiled_module.TREE_LOOP = row_wise, tree_loop
    try:
        return trees.total(XT)
    finally:
        compiled_module.ROW_WISE, compiled_module.TREE_LOOP = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=PROJECT / "model" / "registry",
        help="a registry (its active version is measured) or one model's folder",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alternatives", action="store_true", help="also time the tree evaluations compared")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this process's CPU time (steadier on a shared machine); wall: perf_counter",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    predictor = registry.load_predictor(args.model_dir)
    model = compile_pipeline(predictor.pipeline)
    print(
        f"model {predictor.version} ({predictor.card.get('chosen')}, {predictor.card.get('estimator')}); "
        f"Python {platform.python_version()}, scikit-learn {sklearn.__version__}, numpy {np.__version__}; "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if model is None:
        print("compile_pipeline returned None: this pipeline is not supported, the predictor keeps the pipeline")
        return 1
    passengers = load_passengers()
    with threadpool_limits(limits=1):
        main_timings(predictor, model, passengers, args.rounds)
        if args.alternatives:
            alternatives(predictor, model, passengers, args.rounds)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
