"""The scikit-learn estimators a TrainingJob may name, and the task each one solves.

An allowlist rather than an arbitrary import path: a spec must never make the trainer import and run
whatever module a user names.
"""

from __future__ import annotations

from typing import Literal

Task = Literal["classification", "regression"]

ESTIMATORS: dict[str, Task] = {
    "sklearn.linear_model.LogisticRegression": "classification",
    "sklearn.linear_model.Ridge": "regression",
    "sklearn.linear_model.LinearRegression": "regression",
    "sklearn.linear_model.Lasso": "regression",
    "sklearn.linear_model.ElasticNet": "regression",
    "sklearn.linear_model.SGDClassifier": "classification",
    "sklearn.tree.DecisionTreeClassifier": "classification",
    "sklearn.tree.DecisionTreeRegressor": "regression",
    "sklearn.ensemble.RandomForestClassifier": "classification",
    "sklearn.ensemble.RandomForestRegressor": "regression",
    "sklearn.ensemble.GradientBoostingClassifier": "classification",
    "sklearn.ensemble.GradientBoostingRegressor": "regression",
    "sklearn.ensemble.HistGradientBoostingClassifier": "classification",
    "sklearn.ensemble.HistGradientBoostingRegressor": "regression",
    "sklearn.neighbors.KNeighborsClassifier": "classification",
    "sklearn.neighbors.KNeighborsRegressor": "regression",
    "sklearn.svm.SVC": "classification",
    "sklearn.svm.SVR": "regression",
    "sklearn.naive_bayes.GaussianNB": "classification",
}

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes")
