"""CREATE MODEL options: what each model type accepts, their types, ranges and defaults.

Unknown options, options BigQuery has but loopml does not implement (hyperparameter tuning, CMEK),
and values of the wrong type are refused with a 400 that names the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loopml.errors import InvalidQuery
from loopml.refs import ALIAS_RE, MODEL_ID_RE
from loopml.sqlml.sqltext import Call

KMEANS = "KMEANS"
LINEAR_REG = "LINEAR_REG"
LOGISTIC_REG = "LOGISTIC_REG"
BOOSTED_CLASSIFIER = "BOOSTED_TREE_CLASSIFIER"
BOOSTED_REGRESSOR = "BOOSTED_TREE_REGRESSOR"
MODEL_TYPES = (KMEANS, LINEAR_REG, LOGISTIC_REG, BOOSTED_CLASSIFIER, BOOSTED_REGRESSOR)
CLASSIFIERS = (LOGISTIC_REG, BOOSTED_CLASSIFIER)
FRAMEWORKS = {
    KMEANS: "bqml-kmeans",
    LINEAR_REG: "bqml-linear",
    LOGISTIC_REG: "bqml-logistic",
    BOOSTED_CLASSIFIER: "bqml-boosted",
    BOOSTED_REGRESSOR: "bqml-boosted",
}


@dataclass(frozen=True)
class Opt:
    kind: str  # "string" | "enum" | "int" | "float" | "bool" | "strings"
    default: Any = None
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    hi_open: bool = False


_COMMON: dict[str, Opt] = {
    "MODEL_TYPE": Opt("enum", None, MODEL_TYPES),
    "MODEL_REGISTRY": Opt("enum", None, ("VERTEX_AI",)),
    "VERTEX_AI_MODEL_ID": Opt("string"),
    "VERTEX_AI_MODEL_VERSION_ALIASES": Opt("strings", []),
    "DESCRIPTION": Opt("string"),
}

_KMEANS: dict[str, Opt] = {
    "NUM_CLUSTERS": Opt("int", None, lo=2, hi=100),
    "KMEANS_INIT_METHOD": Opt("enum", "RANDOM", ("RANDOM", "KMEANS++", "CUSTOM")),
    "KMEANS_INIT_COL": Opt("string"),
    "DISTANCE_TYPE": Opt("enum", "EUCLIDEAN", ("EUCLIDEAN", "COSINE")),
    "STANDARDIZE_FEATURES": Opt("bool", True),
    "MAX_ITERATIONS": Opt("int", 20, lo=1, hi=10_000),
    "EARLY_STOP": Opt("bool", True),
    "MIN_REL_PROGRESS": Opt("float", 0.01, lo=0.0, hi=1.0),
    "WARM_START": Opt("bool", False),
}

_SPLIT: dict[str, Opt] = {
    "INPUT_LABEL_COLS": Opt("strings", ["label"]),
    "DATA_SPLIT_METHOD": Opt("enum", "AUTO_SPLIT", ("AUTO_SPLIT", "RANDOM", "NO_SPLIT")),
    "DATA_SPLIT_EVAL_FRACTION": Opt("float", 0.2, lo=0.0, hi=1.0, hi_open=True),
    "EARLY_STOP": Opt("bool", True),
    "MIN_REL_PROGRESS": Opt("float", 0.01, lo=0.0, hi=1.0),
}

_LINEAR: dict[str, Opt] = {
    **_SPLIT,
    "L1_REG": Opt("float", 0.0, lo=0.0),
    "L2_REG": Opt("float", 0.0, lo=0.0),
    "MAX_ITERATIONS": Opt("int", 20, lo=1, hi=10_000),
    "OPTIMIZE_STRATEGY": Opt(
        "enum", "AUTO_STRATEGY", ("AUTO_STRATEGY", "NORMAL_EQUATION", "BATCH_GRADIENT_DESCENT")
    ),
}

_LOGISTIC: dict[str, Opt] = {**_LINEAR, "AUTO_CLASS_WEIGHTS": Opt("bool", False)}

_BOOSTED: dict[str, Opt] = {
    **_SPLIT,
    "MAX_ITERATIONS": Opt("int", 20, lo=1, hi=10_000),
    "LEARN_RATE": Opt("float", 0.3, lo=0.0, hi=1.0),
    "MAX_TREE_DEPTH": Opt("int", 6, lo=1, hi=20),
    "SUBSAMPLE": Opt("float", 1.0, lo=0.0, hi=1.0),
    "MIN_SPLIT_LOSS": Opt("float", 0.0, lo=0.0),
    "L1_REG": Opt("float", 0.0, lo=0.0),
    "L2_REG": Opt("float", 1.0, lo=0.0),
    "MIN_TREE_CHILD_WEIGHT": Opt("int", 1, lo=0),
    "COLSAMPLE_BYTREE": Opt("float", 1.0, lo=0.0, hi=1.0),
    "COLSAMPLE_BYLEVEL": Opt("float", 1.0, lo=0.0, hi=1.0),
    "COLSAMPLE_BYNODE": Opt("float", 1.0, lo=0.0, hi=1.0),
    "NUM_PARALLEL_TREE": Opt("int", 1, lo=1, hi=100),
    "BOOSTER_TYPE": Opt("enum", "GBTREE", ("GBTREE",)),
    "TREE_METHOD": Opt("enum", "AUTO", ("AUTO", "EXACT", "APPROX", "HIST")),
}

SPECS: dict[str, dict[str, Opt]] = {
    KMEANS: _KMEANS,
    LINEAR_REG: _LINEAR,
    LOGISTIC_REG: _LOGISTIC,
    BOOSTED_CLASSIFIER: {**_BOOSTED, "AUTO_CLASS_WEIGHTS": Opt("bool", False)},
    BOOSTED_REGRESSOR: _BOOSTED,
}

# BigQuery options loopml knows about but does not implement, with what to do instead.
_REFUSED = {
    "NUM_TRIALS": "hyperparameter tuning is not supported by loopml; set the hyperparameters directly",
    "MAX_PARALLEL_TRIALS": "hyperparameter tuning is not supported by loopml",
    "HPARAM_TUNING_ALGORITHM": "hyperparameter tuning is not supported by loopml",
    "HPARAM_TUNING_OBJECTIVES": "hyperparameter tuning is not supported by loopml",
    "KMS_KEY_NAME": "customer-managed encryption keys are not supported by loopml",
    "DATA_SPLIT_COL": "DATA_SPLIT_COL (CUSTOM/SEQ splits) is not supported by loopml; use RANDOM or NO_SPLIT",
    "CLASS_WEIGHTS": "CLASS_WEIGHTS is not supported by loopml; use AUTO_CLASS_WEIGHTS",
    "ENABLE_GLOBAL_EXPLAIN": "global explanations are not supported by loopml",
    "CALCULATE_P_VALUES": "p-values are not supported by loopml",
    "CATEGORY_ENCODING_METHOD": "only one-hot encoding is supported by loopml",
    "LEARN_RATE_STRATEGY": "gradient-descent learning-rate settings are not supported; loopml solves LINEAR_REG "
    "and LOGISTIC_REG directly",
    "LS_INIT_LEARN_RATE": "gradient-descent learning-rate settings are not supported by loopml",
    "INTEGRATED_GRADIENTS_NUM_STEPS": "explanations are not supported by loopml",
    "DROPOUT": "DART boosters are not supported by loopml",
    "XGBOOST_VERSION": "XGBOOST_VERSION is not supported; loopml uses the installed xgboost",
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, list):
        return "ARRAY"
    if value is None:
        return "NULL"
    return type(value).__name__


def _check(name: str, opt: Opt, value: Any) -> Any:
    if isinstance(value, Call):
        if value.name.startswith("HPARAM_"):
            raise InvalidQuery(
                f"Option {name}: {value.name} (hyperparameter tuning) is not supported by loopml."
            )
        raise InvalidQuery(f"Option {name}: function values like {value.name}(...) are not supported.")
    want = {"string": "STRING", "enum": "STRING", "int": "INT64", "float": "FLOAT64", "bool": "BOOL"}.get(
        opt.kind, "ARRAY<STRING>"
    )
    bad = InvalidQuery(f"Option {name} expects {want}, got {_type_name(value)} {value!r}.")
    if opt.kind in ("string", "enum"):
        if not isinstance(value, str):
            raise bad
        if opt.kind == "enum":
            value = value.upper()
            if value not in opt.choices:
                raise InvalidQuery(
                    f"Invalid value {value!r} for option {name}: expected one of {', '.join(opt.choices)}."
                )
        return value
    if opt.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if opt.kind == "strings":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return list(value)
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
    if opt.lo is not None and value < opt.lo:
        raise InvalidQuery(f"Option {name} must be at least {opt.lo:g}, got {value!r}.")
    if opt.hi is not None and (value >= opt.hi if opt.hi_open else value > opt.hi):
        bound = f"less than {opt.hi:g}" if opt.hi_open else f"at most {opt.hi:g}"
        raise InvalidQuery(f"Option {name} must be {bound}, got {value!r}.")
    return value


def validate(raw: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Checked options with every default filled in (NUM_CLUSTERS stays None until n is known)."""
    if "MODEL_TYPE" not in raw:
        raise InvalidQuery(
            "CREATE MODEL needs OPTIONS(MODEL_TYPE = ...): one of " + ", ".join(MODEL_TYPES) + "."
        )
    model_type = _check("MODEL_TYPE", _COMMON["MODEL_TYPE"], raw["MODEL_TYPE"])
    spec = {**_COMMON, **SPECS[model_type]}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _REFUSED:
            raise InvalidQuery(f"Option {name} is not supported: {_REFUSED[name]}.")
        opt = spec.get(name)
        if opt is None:
            if any(name in other for other in SPECS.values()):
                raise InvalidQuery(f"Option {name} is not supported for MODEL_TYPE '{model_type}'.")
            raise InvalidQuery(f"Unknown option {name} in CREATE MODEL.")
        out[name] = _check(name, opt, value)
    for name, opt in spec.items():
        if name not in out:
            out[name] = list(opt.default) if isinstance(opt.default, list) else opt.default
    _cross_checks(out, set(raw), model_type, model_name)
    return out


def _cross_checks(out: dict[str, Any], explicit: set[str], model_type: str, model_name: str) -> None:
    registry = out["MODEL_REGISTRY"]
    for name in ("VERTEX_AI_MODEL_ID", "VERTEX_AI_MODEL_VERSION_ALIASES"):
        if out.get(name) and not registry:
            raise InvalidQuery(f"Option {name} can only be set together with MODEL_REGISTRY = 'VERTEX_AI'.")
    if registry:
        model_id = out["VERTEX_AI_MODEL_ID"] or model_name
        if not MODEL_ID_RE.match(model_id) or model_id[0] == "-":
            source = (
                "VERTEX_AI_MODEL_ID"
                if out["VERTEX_AI_MODEL_ID"]
                else "the model name (default VERTEX_AI_MODEL_ID)"
            )
            raise InvalidQuery(
                f"Invalid Vertex AI model id {model_id!r} from {source}: at most 63 characters of "
                "[a-z0-9_-], not starting with a digit or hyphen."
            )
        out["VERTEX_AI_MODEL_ID"] = model_id
        for alias in out["VERTEX_AI_MODEL_VERSION_ALIASES"]:
            if not ALIAS_RE.match(alias) or alias.isdigit():
                raise InvalidQuery(
                    f"Invalid alias {alias!r} in VERTEX_AI_MODEL_VERSION_ALIASES: must match {ALIAS_RE.pattern}."
                )
    if model_type == KMEANS:
        method = out["KMEANS_INIT_METHOD"]
        if out["KMEANS_INIT_COL"] and method != "CUSTOM":
            raise InvalidQuery("Option KMEANS_INIT_COL requires KMEANS_INIT_METHOD = 'CUSTOM'.")
        if method == "CUSTOM" and not out["KMEANS_INIT_COL"]:
            raise InvalidQuery("KMEANS_INIT_METHOD = 'CUSTOM' needs KMEANS_INIT_COL naming a BOOL column.")
    else:
        labels = out["INPUT_LABEL_COLS"]
        if len(labels) != 1:
            raise InvalidQuery(f"Option INPUT_LABEL_COLS must name exactly one column, got {labels!r}.")
        if "DATA_SPLIT_EVAL_FRACTION" in explicit and out["DATA_SPLIT_METHOD"] != "RANDOM":
            raise InvalidQuery("Option DATA_SPLIT_EVAL_FRACTION needs DATA_SPLIT_METHOD = 'RANDOM'.")
