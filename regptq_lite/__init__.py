"""regptq_lite: the package behind the Reg-PTQ workbook (post-training quantization of a fully quantized detector)."""

__version__ = "0.1.0"
