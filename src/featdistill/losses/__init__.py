"""featdistill.losses: pure loss functions, one family per file.

* :mod:`~featdistill.losses.logits` — CE, Hinton KD, DKD, DIST, focal loss, soft-target CE;
* :mod:`~featdistill.losses.features` — FitNets, attention transfer, ND (KD++) and class means;
* :mod:`~featdistill.losses.logit_variants` — logit standardisation, NKD, Tf-KD / LSR, DIST+ relations, PAD-L2, SSKD;
* :mod:`~featdistill.losses.relations` — linear CKA;
* :mod:`~featdistill.losses.schedule` — loss-weight schedules (constant, linear warm-up).

Every loss returns an *unweighted* term (batch-mean unless ``reduction="none"``); weights and warm-ups are
:class:`Schedule` objects applied by the distiller. Definitions follow the shared ``reference/methods.md``.
"""

from featdistill.losses.contrastive import (
    contrast_scores,
    l2_normalize,
    momentum_rows,
    nce_loss,
    sample_contrast_indices,
)
from featdistill.losses.features import at_loss, attention_map, class_means, fitnet_loss, nd_loss
from featdistill.losses.logit_variants import (
    channel_relation_loss,
    cosine_similarity_matrix,
    error_rejection_rows,
    lsr_loss,
    nkd_loss,
    pad_l2_loss,
    spatial_relation_loss,
    sskd_similarity_loss,
    standardize_logits,
    tfkd_loss,
    tfkd_teacher,
)
from featdistill.losses.logits import (
    cross_entropy,
    dist_loss,
    dist_terms,
    dkd_loss,
    dkd_terms,
    focal_loss,
    inter_class_relation,
    intra_class_relation,
    kd_loss,
    pearson_correlation,
    soft_target_ce,
    topk_to_probs,
)
from featdistill.losses.relations import cka_loss, linear_cka
from featdistill.losses.schedule import Schedule, constant, linear_warmup

__all__ = [
    "Schedule",
    "at_loss",
    "attention_map",
    "cka_loss",
    "class_means",
    "constant",
    "contrast_scores",
    "cross_entropy",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "fitnet_loss",
    "focal_loss",
    "inter_class_relation",
    "intra_class_relation",
    "kd_loss",
    "l2_normalize",
    "linear_cka",
    "linear_warmup",
    "lsr_loss",
    "momentum_rows",
    "nd_loss",
    "nkd_loss",
    "nce_loss",
    "pearson_correlation",
    "sample_contrast_indices",
    "soft_target_ce",
    "standardize_logits",
    "tfkd_loss",
    "tfkd_teacher",
    "channel_relation_loss",
    "spatial_relation_loss",
    "pad_l2_loss",
    "cosine_similarity_matrix",
    "error_rejection_rows",
    "sskd_similarity_loss",
    "topk_to_probs",
]
