"""DEQ cells ``f_theta(z, x)``."""

from .cells import ConvTanhCell, TanhCell, conv_operator_norm

__all__ = ["ConvTanhCell", "TanhCell", "conv_operator_norm"]
