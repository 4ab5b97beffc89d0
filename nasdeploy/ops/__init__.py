"""Candidate operations and building blocks shared by search spaces and static networks."""

from nasdeploy.ops.cnn import (
    CNN_OPS,
    Conv7x1_1x7,
    DilConv,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    SepConv,
    Zero,
    build_op,
    is_identity,
)
from nasdeploy.ops.drop_path import drop_path
from nasdeploy.ops.autodeeplab import ADL_OPS, AtrousConv, build_adl_op, downsample2, resize_bilinear, upsample2

__all__ = [
    "CNN_OPS",
    "build_op",
    "is_identity",
    "ReLUConvBN",
    "DilConv",
    "SepConv",
    "Conv7x1_1x7",
    "Identity",
    "Zero",
    "FactorizedReduce",
    "drop_path",
    "ADL_OPS",
    "AtrousConv",
    "build_adl_op",
    "resize_bilinear",
    "upsample2",
    "downsample2",
]
