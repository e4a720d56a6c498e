"""featdistill.condense: dataset distillation (DM, DataDAM, DC, DSA, MTT, FYI) with coreset baselines and an
honest evaluation protocol. See ``docs/condense.md``."""

from .augment import DSA, DSAParams, default_strategy, flip_pairs
from .config import CondenseConfig, TeacherConfig, run_condense_config, run_condense_eval, run_condense_relabel
from .core import CONDENSERS, METHODS, condense, datadam_loss, dc_loss, dm_loss, soft_labels, with_teacher_labels
from .evaluate import EvalProtocol, evaluate, robust_score
from .mtt import ExpertBuffer, train_experts
from .real import RealData, as_real_data
from .relabel import ViewLabels, build_label_store, open_view_labels, relabel
from .synthetic import SyntheticSet

__all__ = [
    "CONDENSERS",
    "CondenseConfig",
    "TeacherConfig",
    "run_condense_config",
    "run_condense_eval",
    "run_condense_relabel",
    "DSA",
    "DSAParams",
    "EvalProtocol",
    "ExpertBuffer",
    "METHODS",
    "RealData",
    "SyntheticSet",
    "ViewLabels",
    "as_real_data",
    "build_label_store",
    "condense",
    "datadam_loss",
    "dc_loss",
    "default_strategy",
    "dm_loss",
    "evaluate",
    "flip_pairs",
    "open_view_labels",
    "relabel",
    "robust_score",
    "soft_labels",
    "train_experts",
    "with_teacher_labels",
]
