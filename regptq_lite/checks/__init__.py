"""Assignment checks that teach, one module per notebook topic: ``core`` (how a check teaches, and the
machinery every check shares), ``quantization`` (notebooks 01-02), ``boxes`` (03), ``llaq`` (04), ``fgic`` (05)
and ``reconstruction`` (06). ``ALL`` maps each exercise to its check."""

from .boxes import box_decode
from .core import CheckFailed, set_hints
from .fgic import filter_mask, global_loss
from .llaq import learned_exponent, llaq_forward, snap_k
from .quantization import laplace_fit, uniform_fake_quant
from .reconstruction import fisher_local_loss, reconstruct_unit, rounding_regularizer

ALL = {
    "laplace_fit": laplace_fit,
    "uniform_fake_quant": uniform_fake_quant,
    "box_decode": box_decode,
    "llaq_forward": llaq_forward,
    "snap_k": snap_k,
    "learned_exponent": learned_exponent,
    "filter_mask": filter_mask,
    "global_loss": global_loss,
    "fisher_local_loss": fisher_local_loss,
    "rounding_regularizer": rounding_regularizer,
    "reconstruct_unit": reconstruct_unit,
}

__all__ = [
    "ALL",
    "CheckFailed",
    "box_decode",
    "filter_mask",
    "fisher_local_loss",
    "global_loss",
    "laplace_fit",
    "learned_exponent",
    "llaq_forward",
    "reconstruct_unit",
    "rounding_regularizer",
    "set_hints",
    "snap_k",
    "uniform_fake_quant",
]
