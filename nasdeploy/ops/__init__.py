"""Candidate operations and building blocks shared by search spaces and static networks."""

from nasdeploy.ops.darts_cnn import (
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
from nasdeploy.ops.autodeeplab import AUTODEEPLAB_OPS, AtrousConv, build_autodeeplab_op, downsample2, resize_bilinear, upsample2

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
    "AUTODEEPLAB_OPS",
    "AtrousConv",
    "build_autodeeplab_op",
    "resize_bilinear",
    "upsample2",
    "downsample2",
]
