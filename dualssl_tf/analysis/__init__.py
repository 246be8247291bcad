"""The paper's analysis toolkit (Tian et al. 2020, docs/theory.md sections 2-5). Reads models only;
never imported by training code (:mod:`dualssl_tf.training` hands ``callback``'s monitor to the
trainer when --analysis_every > 0).

connections   K_l(x)^T = d f_L / d vec(W_l), vectorised; reversibility residual
covariance    low-rank OP_l = V[Kbar_l] and the xi-weighted Theorem-4 operator
operator_free OP_l u and OP_l vec(W_l) for any encoder by JVP/VJP (no connections formed);
              power-iteration top eigenvalue, Hutchinson trace, reversibility residue
theorems      float64 checks of Theorems 1-4 on enumerated augmentations
selectivity   lucky nodes (Theorem 5) of the HLTM tree network
translation   1-D translation toy: trained filters vs OP's eigenvectors at init
sampling      base points x augmentations for HLTM and the translation toy
callback      per-epoch ||OP||_F, ||W||, alignment into the epoch logs
runs, report, plots   reading a finished run, analysis.json and PNG figures (tools/analyze.py)
"""
