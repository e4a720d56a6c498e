"""featdistill.losses: pure loss functions, one family per file.

* :mod:`~featdistill.losses.logits` — CE, Hinton KD, DKD, DIST, focal loss, soft-target CE;
* :mod:`~featdistill.losses.feature_regression` — VID, FT, OFD, ReviewKD (HCL), SRD;
* :mod:`~featdistill.losses.features` — FitNets, attention transfer, ND (KD++) and class means;
* :mod:`~featdistill.losses.logit_variants` — logit standardisation, NKD, Tf-KD / LSR, DIST+ relations, PAD-L2, SSKD;
* :mod:`~featdistill.losses.relations` — linear CKA;
* :mod:`~featdistill.losses.similarity` — SP, CC, RKD, PKT, NST, ICKD, FSP, KDSVD, AB;
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
from featdistill.losses.feature_regression import (
    ft_factor,
    ft_loss,
    hcl_loss,
    match_spatial,
    ofd_margin,
    ofd_partial_l2,
    srd_feature_loss,
    srd_kl,
    vid_loss,
    vid_variance,
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
from featdistill.losses.similarity import (
    ab_criterion,
    ab_loss,
    cc_kernel_matrix,
    cc_loss,
    cckd_loss,
    fsp_loss,
    fsp_matrix,
    ickd_gram,
    ickd_loss,
    kdsvd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_pdist,
    sp_gram,
    sp_loss,
)

__all__ = [
    "Schedule",
    "ab_criterion",
    "ab_loss",
    "at_loss",
    "attention_map",
    "cc_kernel_matrix",
    "cc_loss",
    "cckd_loss",
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
    "fsp_loss",
    "fsp_matrix",
    "ft_factor",
    "ft_loss",
    "hcl_loss",
    "ickd_gram",
    "ickd_loss",
    "inter_class_relation",
    "intra_class_relation",
    "kd_loss",
    "kdsvd_loss",
    "l2_normalize",
    "linear_cka",
    "linear_warmup",
    "lsr_loss",
    "match_spatial",
    "momentum_rows",
    "nce_loss",
    "nd_loss",
    "nkd_loss",
    "nst_loss",
    "ofd_margin",
    "ofd_partial_l2",
    "pearson_correlation",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_pdist",
    "sample_contrast_indices",
    "soft_target_ce",
    "sp_gram",
    "sp_loss",
    "srd_feature_loss",
    "srd_kl",
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
    "vid_loss",
    "vid_variance",
]
