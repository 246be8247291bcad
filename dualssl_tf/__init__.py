"""dualssl_tf: contrastive SSL with dual deep networks (Tian, Yu, Chen, Ganguli 2020)."""

__version__ = "0.1.0"
