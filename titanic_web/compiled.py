"""A fitted pipeline compiled into plain arrays, for predicting one or a few passengers fast.

:func:`compile_pipeline` reads the fitted steps of a trained pipeline (ticket
counts and groups, imputer and scaler statistics, one-hot categories and the estimator's
trees or coefficients) when the model is loaded; nothing here is maintained by
hand. Features come from :func:`titanic_web.features.engineer_many`, the same
code the pipeline's first step runs, and the arithmetic follows scikit-learn's
step for step (float32 features for trees, the same order of additions), so the
probabilities are the pipeline's, bit for bit on the models trained here.

Anything the compiler does not recognise makes it return None, and the caller
keeps using the pipeline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit, logit
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from titanic_web import features

#: Up to this many passengers, rows become model input in plain Python; beyond, column by column.
SMALL_BATCH = 16
#: Trees up to this depth are evaluated with one lookup table per tree (2**(2**depth) entries).
TABLE_DEPTH = 3
#: Up to this many rows, shallow trees are evaluated row by row (see bench/bench_predictor.py:
#: one row is clearly faster so; from 2 to 8 rows the layouts are within noise of each other).
ROW_WISE = 1
#: From this many rows, leaf values are summed tree by tree in a loop rather than by np.add.accumulate.
ROWS_LOOP = 128
#: From this many rows, shallow trees are looked up and summed one tree at a time. The two ways
#: are even from about 1,000 rows to 2,000 when timed alone (bench/bench_predictor.py
#: --alternatives), but the all-at-once way makes two (trees, rows) arrays, 3.2 MB each for 200
#: trees and a batch chunk of 2,000 rows, and in a server's batch path those cost it 3.3 ms a
#: chunk against 0.9 for the loop, which makes nothing larger than a row of answers.
TREE_LOOP = 1024
_LEAF = -1  # sklearn.tree._tree.TREE_LEAF


class Scored(NamedTuple):
    """Probabilities of survival and the engineered rows (FEATURES order) they came from."""

    probabilities: np.ndarray
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class _Numeric:
    """One numeric model input: features[source], imputed, then (x - shift) / scale."""

    position: int
    source: int
    fill: float
    shift: float  # 0.0 when not centred: x - 0.0 is x exactly
    scale: float  # 1.0 when not scaled: x / 1.0 is x exactly


@dataclass(frozen=True)
class _OneHot:
    """One categorical feature: features[source] -> the model input set to 1.0 (none if unknown)."""

    source: int
    positions: dict[str, int]


class _Trees:
    """A sum of tree leaf values over all trees, evaluated for all trees at once with numpy.

    Every split is a (feature, threshold) condition; the distinct conditions are
    compared once per row. Shallow trees (depth <= TABLE_DEPTH) then pack the
    conditions of their (padded) nodes into one byte per tree and read the leaf
    from a per-tree table; deeper trees walk level by level. Leaf values are
    added in tree order, starting from ``start``, as scikit-learn does, and the
    sum is divided by ``divisor`` when given (a forest's mean).
    """

    def __init__(
        self,
        trees: Sequence[Any],
        leaf_values: Sequence[np.ndarray],
        *,
        start: float,
        divisor: float | None,
        table: bool | None = None,  # None: tables when the trees are shallow enough
    ) -> None:
        self.n_trees = len(trees)
        self.divisor = divisor
        self.depth = max(int(tree.max_depth) for tree in trees)
        conditions: dict[tuple[int, float], int] = {(0, math.inf): 0}  # x > inf never holds: go left

        def condition(feature: int, threshold: float) -> int:
            return conditions.setdefault((feature, threshold), len(conditions))

        node_conditions = []
        for tree in trees:
            left = tree.children_left
            node_conditions.append(
                [
                    0 if left[i] == _LEAF else condition(int(tree.feature[i]), float(tree.threshold[i]))
                    for i in range(tree.node_count)
                ]
            )
        # Fold the starting value into the first tree's leaves: start + v0 is the first addition anyway.
        values = [np.asarray(v, dtype=np.float64) for v in leaf_values]
        values[0] = start + values[0]
        if table is None:
            table = self.depth <= TABLE_DEPTH
        self.table = bool(table)
        if table:
            _require(self.depth <= TABLE_DEPTH)
            self._build_tables(trees, node_conditions, values)
        else:
            self._build_walk(trees, node_conditions, values)
        self.condition_features = np.array([f for f, _ in conditions], dtype=np.intp)
        self.condition_thresholds = np.array([t for _, t in conditions], dtype=np.float64)
        if self.table:  # each tree's 8 heap slots as (feature, threshold), for one row at a time
            self.slot_features = self.condition_features[self.slots.ravel()]
            self.slot_thresholds = self.condition_thresholds[self.slots.ravel()]

    def _build_tables(self, trees: Sequence[Any], node_conditions: list[list[int]], values: list[np.ndarray]) -> None:
        slots = np.zeros((len(trees), 8), dtype=np.intp)  # heap slots 0..6; slot 7 stays "go left"
        tables = np.empty((len(trees), 256), dtype=np.float64)
        for t, tree in enumerate(trees):
            left, right = tree.children_left, tree.children_right
            stack = [(0, 0)]  # (node, heap slot)
            while stack:
                node, slot = stack.pop()
                if left[node] != _LEAF:
                    slots[t, slot] = node_conditions[t][node]
                    stack += [(int(left[node]), 2 * slot + 1), (int(right[node]), 2 * slot + 2)]
            # Walk every code at once; bit j of a code: the condition at heap slot j holds.
            codes = np.arange(256)
            nodes = np.zeros(256, dtype=np.intp)
            heap_slots = np.zeros(256, dtype=np.intp)
            for _ in range(self.depth):
                inner = left[nodes] != _LEAF
                right_ = ((codes >> heap_slots) & 1).astype(bool)
                nodes = np.where(inner, np.where(right_, right[nodes], left[nodes]), nodes)
                heap_slots = np.where(inner, 2 * heap_slots + 1 + right_, heap_slots)
            tables[t] = values[t][nodes]
        self.slots = slots
        self.tables = tables.ravel()
        self.table_base = np.arange(len(trees), dtype=np.intp) * 256

    def _build_walk(self, trees: Sequence[Any], node_conditions: list[list[int]], values: list[np.ndarray]) -> None:
        roots, conds, children, leaf_values = [], [], [], []
        offset = 0
        for t, tree in enumerate(trees):
            n = tree.node_count
            own = np.arange(n)
            leaf = tree.children_left == _LEAF
            pair = np.empty(2 * n, dtype=np.intp)  # [left, right] per node; a leaf points to itself
            pair[0::2] = np.where(leaf, own, tree.children_left) + offset
            pair[1::2] = np.where(leaf, own, tree.children_right) + offset
            roots.append(offset)
            conds.append(np.asarray(node_conditions[t], dtype=np.intp))
            children.append(pair)
            leaf_values.append(np.where(leaf, values[t], 0.0))
            offset += n
        self.roots = np.array(roots, dtype=np.intp)[:, None]
        self.node_conditions = np.concatenate(conds)
        self.children = np.concatenate(children)
        self.node_values = np.concatenate(leaf_values)

    def _conditions(self, XT: np.ndarray) -> np.ndarray:
        """(conditions, n) uint8: 1 where a row goes right at that split."""
        # Trees see float32 features compared with float64 thresholds, as in scikit-learn.
        XT32 = XT.astype(np.float32)
        return (XT32[self.condition_features] > self.condition_thresholds[:, None]).view(np.uint8)

    def _codes(self, XT: np.ndarray) -> np.ndarray:
        """(trees, n) uint8: bit j set where the condition at heap slot j holds."""
        n = XT.shape[1]
        conditions = np.zeros((len(self.condition_features), n + -n % 8), dtype=np.uint8)
        XT32 = XT.astype(np.float32)  # as in _conditions
        np.greater(XT32[self.condition_features], self.condition_thresholds[:, None], out=conditions[:, :n].view(bool))
        # Eight rows per operation: the bytes are 0 or 1 and shifted by at most 6, so a
        # shift of the 64-bit word never carries from one byte into the next.
        words = conditions.view(np.uint64)
        slots = self.slots
        codes = words[slots[:, 0]]
        bits = np.empty_like(codes)
        for j in range(1, 7):
            np.take(words, slots[:, j], axis=0, out=bits)
            bits <<= np.uint64(j)
            codes |= bits
        return codes.view(np.uint8)[:, :n]

    def total(self, XT: np.ndarray) -> np.ndarray:
        """The (n,) sums over trees for model inputs XT of shape (features, n), in tree order."""
        n = XT.shape[1]
        if self.table and n == 1:
            # One passenger: its 8 conditions per tree packed into a byte by numpy, fewest calls.
            bits = XT[:, 0].astype(np.float32)[self.slot_features] > self.slot_thresholds
            values = self.tables[np.packbits(bits, bitorder="little") + self.table_base]
            total = np.add.accumulate(values)[-1:]
            return total / self.divisor if self.divisor is not None else total
        if self.table and n <= ROW_WISE:
            # The same, row by row, for a few passengers.
            bits = XT.T.astype(np.float32)[:, self.slot_features] > self.slot_thresholds
            codes = np.packbits(bits, axis=1, bitorder="little")  # (n, trees)
            values = self.tables[codes + self.table_base].T
        elif self.table and n >= TREE_LOOP:
            # Many rows: gather and add one tree at a time, so nothing (trees, n) but the codes.
            codes = self._codes(XT)
            tables = self.tables.reshape(self.n_trees, 256)
            total = tables[0].take(codes[0])
            for t in range(1, self.n_trees):
                total += tables[t].take(codes[t])
            return total / self.divisor if self.divisor is not None else total
        elif self.table:
            values = self.tables[self._codes(XT) + self.table_base[:, None]]
        else:
            values = self._walk(XT)
        # Strictly in tree order, as scikit-learn adds (np.sum would add pairwise).
        if n < ROWS_LOOP:
            total = np.add.accumulate(values, axis=0)[-1]
        else:
            total = values[0].copy()
            for row in values[1:]:
                total += row
        return total / self.divisor if self.divisor is not None else total

    def _walk(self, XT: np.ndarray) -> np.ndarray:
        """(trees, n) leaf values, walking all trees one level at a time."""
        conditions = self._conditions(XT)
        n = conditions.shape[1]
        flat = conditions.ravel()
        column = np.arange(n, dtype=np.intp)
        node = np.repeat(self.roots, n, axis=1)
        for _ in range(self.depth):
            node = self.children[2 * node + flat[self.node_conditions[node] * n + column]]
        return self.node_values[node]


class _Paths:
    """Trees' outputs split among the features split on along each row's path (Saabas).

    Every node gets its expected value (its leaves' values weighted by the
    training samples that reached them); a split's change of expected value is
    credited to its feature. Along a path the changes add up to the leaf's value
    minus the root's, so the base (the roots' values, plus ``start``) plus the
    contributions is the model's output exactly: faithful by construction.
    """

    def __init__(
        self, trees: Sequence[Any], leaf_values: Sequence[np.ndarray], *, start: float, divisor: float | None
    ) -> None:
        self.trees = list(trees)
        self.divisor = divisor
        self.expected = [
            _expected_values(tree, np.asarray(v, dtype=np.float64)) for tree, v in zip(trees, leaf_values, strict=True)
        ]
        base = start + math.fsum(float(e[0]) for e in self.expected)
        self.base = base / divisor if divisor is not None else base

    def contributions(self, XT: np.ndarray) -> tuple[float, np.ndarray]:
        width, n = XT.shape
        X32 = XT.astype(np.float32)  # trees compare float32 features, as in scikit-learn
        out = np.zeros((width, n), dtype=np.float64)
        for tree, expected in zip(self.trees, self.expected, strict=True):
            left, right, feature, threshold = tree.children_left, tree.children_right, tree.feature, tree.threshold
            node = np.zeros(n, dtype=np.intp)
            for _ in range(int(tree.max_depth)):
                inner = np.flatnonzero(left[node] != _LEAF)
                if not inner.size:
                    break
                at = node[inner]
                split = feature[at]
                right_ = X32[split, inner] > threshold[at]
                child = np.where(right_, right[at], left[at])
                np.add.at(out, (split, inner), expected[child] - expected[at])
                node[inner] = child
        if self.divisor is not None:
            out /= self.divisor
        return self.base, out


def _expected_values(tree: Any, leaf_values: np.ndarray) -> np.ndarray:
    """Each node's expected value: leaves keep theirs; an inner node averages its children by sample weight."""
    values = leaf_values.astype(np.float64).copy()
    left, right = tree.children_left, tree.children_right
    weights = tree.weighted_n_node_samples
    for node in range(tree.node_count - 1, -1, -1):  # children are numbered after their parent
        if left[node] != _LEAF:
            lc, rc = left[node], right[node]
            values[node] = (weights[lc] * values[lc] + weights[rc] * values[rc]) / (weights[lc] + weights[rc])
    return values


class _Boosting:
    """GradientBoostingClassifier, binary log-loss: expit(init + sum of learning_rate * leaf)."""

    scale = "log-odds"

    def __init__(self, model: GradientBoostingClassifier, init: float) -> None:
        trees = [estimator.tree_ for estimator in model.estimators_[:, 0]]
        rate = model.learning_rate
        # predict_stages adds `scale * value[leaf]`: the same product, made once here.
        leaves = [rate * tree.value[:, 0, 0] for tree in trees]
        self.trees = _Trees(trees, leaves, start=init, divisor=None)
        self._paths = _Paths(trees, leaves, start=init, divisor=None)

    def probabilities(self, XT: np.ndarray) -> np.ndarray:
        return expit(self.trees.total(XT))

    def contributions(self, XT: np.ndarray) -> tuple[float, np.ndarray]:
        """The base log-odds and each input's share of every row's log-odds, (width, n)."""
        return self._paths.contributions(XT)


class _Forest:
    """RandomForestClassifier: the mean over trees of each leaf's class-1 fraction."""

    def __init__(self, model: RandomForestClassifier) -> None:
        trees = [estimator.tree_ for estimator in model.estimators_]
        # DecisionTreeClassifier.predict_proba returns tree_.value[:, 0, :n_classes] as stored.
        values = [tree.value[:, 0, 1] for tree in trees]
        self.trees = _Trees(trees, values, start=0.0, divisor=float(len(trees)))
        self._paths = _Paths(trees, values, start=0.0, divisor=float(len(trees)))

    scale = "probability"

    def probabilities(self, XT: np.ndarray) -> np.ndarray:
        return self.trees.total(XT)

    def contributions(self, XT: np.ndarray) -> tuple[float, np.ndarray]:
        """The base probability and each input's share of every row's probability, (width, n)."""
        return self._paths.contributions(XT)


class _Linear:
    """LogisticRegression, binary: expit(X @ coef_.T + intercept_)."""

    def __init__(self, model: LogisticRegression) -> None:
        self.coef_t = model.coef_.T  # the same transposed view decision_function multiplies by
        self.intercept = model.intercept_.copy()

    scale = "log-odds"

    def contributions(self, XT: np.ndarray) -> tuple[float, np.ndarray]:
        """The intercept and each input's term of every row's log-odds, (width, n).

        Numeric inputs are centred on their training mean, so a term is the
        input's pull away from an average passenger's.
        """
        return float(self.intercept[0]), self.coef_t[:, :1] * XT

    def probabilities(self, XT: np.ndarray) -> np.ndarray:
        # Rows in C order, as decision_function multiplies them (BLAS may round otherwise).
        X = np.ascontiguousarray(XT.T)
        return expit((X @ self.coef_t + self.intercept).reshape(-1))


class CompiledModel:
    """A fitted pipeline as arrays: passengers -> features -> model inputs -> P(survived)."""

    def __init__(
        self,
        *,
        known: features.Known,
        numeric: Sequence[_Numeric],
        categorical: Sequence[_OneHot],
        width: int,
        estimator: _Boosting | _Forest | _Linear,
    ) -> None:
        self.known = known
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.width = width
        self.estimator = estimator
        self._numeric_plain = tuple((c.position, c.source, c.fill, c.shift, c.scale) for c in self.numeric)
        self._categorical_plain = tuple((c.source, c.positions) for c in self.categorical)

    def engineer(self, passengers: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """The engineered rows (FEATURES order, NaN when unknown) the pipeline's first step makes."""
        return features.engineer_many(passengers, known=self.known)

    def inputs(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """The (n, width) float64 model inputs the pipeline's column step makes from engineered rows."""
        return np.ascontiguousarray(self._inputs_t(rows).T)

    def _inputs_t(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """The model inputs transposed, (width, n): features by rows."""
        n = len(rows)
        if n <= SMALL_BATCH:
            return np.array([self._row_inputs(row) for row in rows], dtype=np.float64).reshape(n, self.width).T
        columns = list(zip(*rows, strict=True))
        XT = np.zeros((self.width, n), dtype=np.float64)
        for column in self.numeric:
            values = XT[column.position]
            values[:] = columns[column.source]
            values[np.isnan(values)] = column.fill
            values -= column.shift
            values /= column.scale
        for onehot in self.categorical:
            unknown = itertools.repeat(-1, n)
            lookups = map(onehot.positions.get, columns[onehot.source], unknown)
            positions = np.fromiter(lookups, dtype=np.intp, count=n)
            known = np.flatnonzero(positions >= 0)
            XT[positions[known], known] = 1.0
        return XT

    def _row_inputs(self, row: Sequence[Any]) -> list[float]:
        out = [0.0] * self.width
        for position, source, fill, shift, scale in self._numeric_plain:
            value = row[source]
            if value != value:  # NaN: the imputer's statistic
                value = fill
            out[position] = (value - shift) / scale
        for source, positions in self._categorical_plain:
            found = positions.get(row[source])
            if found is not None:
                out[found] = 1.0
        return out

    def probabilities(self, rows: Sequence[Sequence[Any]]) -> np.ndarray:
        """P(survived), shape (n,), for engineered rows."""
        if not rows:
            return np.empty(0, dtype=np.float64)
        return self.estimator.probabilities(self._inputs_t(rows))

    def predict(self, passengers: Sequence[Mapping[str, Any]]) -> Scored:
        """P(survived) for validated passengers, with the engineered rows (for the feature store)."""
        rows = self.engineer(passengers)
        return Scored(self.probabilities(rows), rows)

    def predict_proba(self, passengers: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(n, 2) class probabilities like the pipeline's predict_proba (column 0 is 1 - column 1)."""
        p = self.probabilities(self.engineer(passengers))
        return np.stack([1 - p, p], axis=1)

    def explain(self, rows: Sequence[Sequence[Any]]) -> list[Explanation]:
        """Why each engineered row got its answer: the model's base output and each feature's share of it."""
        if not rows:
            return []
        base, shares = self.estimator.contributions(self._inputs_t(rows))
        # One engineered feature may feed several inputs (one per category): add them up.
        by_feature = self._feature_of_input @ shares  # (features used, n)
        outputs = base + by_feature.sum(axis=0)
        names = self._used_features
        explanations = []
        for j, row in enumerate(rows):
            values = by_feature[:, j].tolist()
            order = sorted(range(len(names)), key=lambda i: (-abs(values[i]), i))
            explanations.append(
                Explanation(
                    base=base,
                    output=float(outputs[j]),
                    scale=self.estimator.scale,
                    contributions=tuple(
                        Contribution(names[i], _plain(row[self._used_sources[i]]), values[i]) for i in order
                    ),
                )
            )
        return explanations

    @property
    def _used_sources(self) -> list[int]:
        """The engineered features (FEATURES positions) the model takes inputs from, in FEATURES order."""
        return sorted({c.source for c in self.numeric} | {c.source for c in self.categorical})

    @property
    def _used_features(self) -> list[str]:
        return [features.FEATURES[source] for source in self._used_sources]

    @property
    def _feature_of_input(self) -> np.ndarray:
        """(features used, width) 0/1: which engineered feature each model input comes from."""
        matrix = getattr(self, "_feature_matrix", None)
        if matrix is None:
            row_of = {source: i for i, source in enumerate(self._used_sources)}
            matrix = np.zeros((len(row_of), self.width), dtype=np.float64)
            for column in self.numeric:
                matrix[row_of[column.source], column.position] = 1.0
            for onehot in self.categorical:
                for position in onehot.positions.values():
                    matrix[row_of[onehot.source], position] = 1.0
            self._feature_matrix = matrix
        return matrix


class Contribution(NamedTuple):
    """One engineered feature's value for a passenger and how far it moved the model's output."""

    feature: str
    value: Any  # the engineered value (None when unknown)
    contribution: float


class Explanation(NamedTuple):
    """A prediction taken apart: ``base`` plus every contribution is ``output`` (on ``scale``).

    ``scale`` is "log-odds" (boosting, logistic regression: the probability is
    expit(output)) or "probability" (a forest). Contributions come most
    important first.
    """

    base: float
    output: float
    scale: str
    contributions: tuple[Contribution, ...]

    def as_dict(self) -> dict[str, Any]:
        """The explanation as the API answers it."""
        return {
            "base": round(self.base, 6),
            "output": round(self.output, 6),
            "scale": self.scale,
            "contributions": [
                {"feature": c.feature, "value": c.value, "contribution": round(c.contribution, 6)}
                for c in self.contributions
            ],
        }


def _plain(value: Any) -> Any:
    """An engineered value as JSON takes it: NaN (unknown) is None, whole floats stay floats."""
    if isinstance(value, float) and value != value:
        return None
    return value


def compile_pipeline(pipeline: Any) -> CompiledModel | None:
    """Compile a fitted training pipeline, or return None if any step is not understood.

    Understood: PassengerFeatures, then a ColumnTransformer of numeric
    SimpleImputer(+StandardScaler) chains and OneHotEncoder(handle_unknown="ignore"),
    then a binary GradientBoostingClassifier (log-loss, prior or zero init),
    RandomForestClassifier or LogisticRegression.
    """
    try:
        return _compile(pipeline)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    """A step or parameter the compiler does not handle."""


def _require(condition: Any) -> None:
    if not condition:
        raise _Unsupported


def _compile(pipeline: Any) -> CompiledModel:
    _require(type(pipeline) is Pipeline and len(pipeline.steps) == 3)
    step, columns, model = (s for _, s in pipeline.steps)
    _require(
        type(step) is features.PassengerFeatures
        and isinstance(getattr(step, "ticket_counts_", None), dict)
        and isinstance(getattr(step, "groups_", None), dict)
    )
    numeric, categorical, width = _compile_columns(columns)
    _require(getattr(model, "n_features_in_", None) == width)
    classes = getattr(model, "classes_", None)
    _require(classes is not None and len(classes) == 2)
    return CompiledModel(
        known=step.known,
        numeric=numeric,
        categorical=categorical,
        width=width,
        estimator=_compile_estimator(model),
    )


def _feature_index(column: Any) -> int:
    if isinstance(column, str):
        _require(column in features.FEATURES)
        return features.FEATURES.index(column)
    _require(isinstance(column, (int, np.integer)) and not isinstance(column, bool))
    _require(0 <= column < len(features.FEATURES))
    return int(column)


def _compile_columns(columns: Any) -> tuple[list[_Numeric], list[_OneHot], int]:
    _require(type(columns) is ColumnTransformer and hasattr(columns, "transformers_"))
    _require(not getattr(columns, "sparse_output_", True))
    names_in = getattr(columns, "feature_names_in_", None)
    _require(names_in is not None and list(names_in) == list(features.FEATURES))
    numeric: list[_Numeric] = []
    categorical: list[_OneHot] = []
    width = 0
    for _, transformer, selected in columns.transformers_:
        if isinstance(transformer, str):
            _require(transformer == "drop")  # "passthrough" would hand text to the model
            continue
        _require(isinstance(selected, (list, tuple)) and selected)
        sources = [_feature_index(c) for c in selected]
        if type(transformer) is OneHotEncoder:
            for source, categories in zip(sources, _one_hot_categories(transformer, len(sources)), strict=True):
                categorical.append(_OneHot(source, {c: width + i for i, c in enumerate(categories)}))
                width += len(categories)
        else:
            fills, shifts, scales = _numeric_chain(transformer, len(sources))
            for source, fill, shift, scale in zip(sources, fills, shifts, scales, strict=True):
                numeric.append(_Numeric(width, source, fill, shift, scale))
                width += 1
    _require(width > 0)
    return numeric, categorical, width


def _one_hot_categories(encoder: OneHotEncoder, n: int) -> list[list[str]]:
    _require(encoder.handle_unknown == "ignore")
    _require(encoder.drop is None and getattr(encoder, "drop_idx_", None) is None)
    _require(encoder.min_frequency is None and encoder.max_categories is None)
    _require(not getattr(encoder, "_infrequent_enabled", False))
    _require(not encoder.sparse_output and np.dtype(encoder.dtype) == np.float64)
    _require(len(encoder.categories_) == n)
    out = []
    for categories in encoder.categories_:
        values = list(categories)
        _require(all(type(v) is str for v in values) and len(set(values)) == len(values))
        out.append(values)
    return out


def _numeric_chain(transformer: Any, n: int) -> tuple[list[float], list[float], list[float]]:
    """Fill, shift and scale per column of a SimpleImputer [+ StandardScaler] chain."""
    steps = [s for _, s in transformer.steps] if type(transformer) is Pipeline else [transformer]
    _require(len(steps) in (1, 2))
    imputer = steps[0]
    _require(type(imputer) is SimpleImputer)
    missing = imputer.missing_values
    _require(isinstance(missing, float) and math.isnan(missing) and not imputer.add_indicator)
    fills = np.asarray(imputer.statistics_, dtype=np.float64)
    # A NaN statistic (a column empty in training) is dropped or kept as NaN: not handled here.
    _require(fills.shape == (n,) and np.isfinite(fills).all())
    shifts = np.zeros(n)
    scales = np.ones(n)
    if len(steps) == 2:
        scaler = steps[1]
        _require(type(scaler) is StandardScaler)
        if scaler.with_mean:
            shifts = np.asarray(scaler.mean_, dtype=np.float64)
        if scaler.with_std:
            scales = np.asarray(scaler.scale_, dtype=np.float64)
        _require(shifts.shape == (n,) and scales.shape == (n,))
    return fills.tolist(), shifts.tolist(), scales.tolist()


def _compile_estimator(model: Any) -> _Boosting | _Forest | _Linear:
    kind = type(model)
    if kind is GradientBoostingClassifier:
        _require(model.loss == "log_loss" and model.n_trees_per_iteration_ == 1)
        _require(model.estimators_.ndim == 2 and model.estimators_.shape[1] == 1 and len(model.estimators_))
        trees = model.estimators_[:, 0]
        _require(all(type(e) is DecisionTreeRegressor and e.tree_.value.shape[1:] == (1, 1) for e in trees))
        return _Boosting(model, _boosting_init(model))
    if kind is RandomForestClassifier:
        _require(model.n_outputs_ == 1 and len(model.estimators_))
        trees = model.estimators_
        _require(all(type(e) is DecisionTreeClassifier and e.tree_.value.shape[1:] == (1, 2) for e in trees))
        return _Forest(model)
    if kind is LogisticRegression:
        _require(model.coef_.shape == (1, model.n_features_in_) and model.intercept_.shape == (1,))
        return _Linear(model)
    raise _Unsupported


def _boosting_init(model: GradientBoostingClassifier) -> float:
    """The init estimator's raw prediction: logit of the clipped class prior (or 0 for 'zero')."""
    init = model.init_
    if isinstance(init, str):
        _require(init == "zero")
        return 0.0
    _require(type(init) is DummyClassifier and init.strategy == "prior" and len(init.class_prior_) == 2)
    # As _init_raw_predictions: clip the positive class's prior away from 0 and 1, then the link.
    eps = np.finfo(np.float64).eps
    prior = np.clip(np.asarray(init.class_prior_[1:], dtype=np.float64), eps, 1 - eps)
    return float(logit(prior)[0])
