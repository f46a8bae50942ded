"""Run inside the MLflow venv: train the same model and save it in MLflow's format."""

from __future__ import annotations

import sys

import mlflow.sklearn
import numpy as np
from sklearn.tree import DecisionTreeClassifier

rng = np.random.default_rng(7)
X = rng.normal(size=(5000, 3))
y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
model = DecisionTreeClassifier(max_depth=8, random_state=0).fit(X, y)
try:  # MLflow >= 3.5 serialises with skops and wants the tree type trusted explicitly
    mlflow.sklearn.save_model(model, sys.argv[1], skops_trusted_types=["sklearn.tree._tree.Tree"])
except TypeError:
    mlflow.sklearn.save_model(model, sys.argv[1])
