"""BVLC Caffe's files, read once and turned into this package's conventions: ``bvlc_alexnet.caffemodel``
(the only public trained weights of the paper's grouped, LRN architecture) and ``imagenet_mean.binaryproto``.

The files are protobuf messages of ``src/caffe/proto/caffe.proto`` (BVLC/caffe). They are parsed with the
protobuf library against the few messages and fields needed here, with caffe.proto's field numbers:

    NetParameter      name = 1; layers = 2 (V1LayerParameter, the 2014 release); layer = 100 (LayerParameter)
    LayerParameter    name = 1; type = 2 (string); blobs = 7
    V1LayerParameter  layer = 1 (V0LayerParameter: the pre-2014 format); name = 4; type = 5 (enum); blobs = 6
    BlobProto         num = 1, channels = 2, height = 3, width = 4 (V1's 4-D shape; inner products 1x1xOxI);
                      data = 5 (packed float); shape = 7 (BlobShape); double_data = 8
    BlobShape         dim = 1 (packed int64)

Caffe's conventions, converted here so that nothing else in the package needs them: conv1 reads BGR (its
input channels are reversed to read RGB), the mean is BGR (reversed to RGB); the LRN (k = 1, alpha/n over all
96 maps) and ceil-rounded pooling are the ``caffe`` variant's own.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Tuple

import numpy as np
import torch

from . import paper

# bvlc_alexnet.caffemodel as BVLC/caffe's models/bvlc_alexnet/readme.md gives it
BVLC_SHA1 = "9116a64c0fbe4459d18f4bb6b56d647b63920377"
BVLC_TOP1_TOP5 = (0.571, 0.802)  # ILSVRC-2012 val accuracy, centre crop (the readme)
BGR_MEAN = (104.0, 117.0, 123.0)  # Caffe's usual per-channel mean when no mean file is given
LEARNED = {"Convolution": "conv", "InnerProduct": "fc"}  # V2 layer types that hold weights
V1_LEARNED = {4: "conv", 14: "fc"}  # V1LayerParameter.LayerType CONVOLUTION, INNER_PRODUCT


class CaffeError(ValueError):
    """A file that is not what it should be: one line, naming the layer where it applies. ``remedy`` (with
    ``facts``) names what would mend it, as DataError's does, for the commands to phrase."""

    def __init__(self, message: str, remedy: str = "", **facts: str):
        super().__init__(message)
        self.remedy, self.facts = remedy, facts


_CLASSES: dict = {}


def _messages() -> dict:
    """The protobuf classes of the schema above, built once (``protobuf`` is an install requirement, so that
    published weights by name need no extra install; published.py)."""
    if _CLASSES:
        return _CLASSES
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise CaffeError(
            "reading Caffe files needs the protobuf package", "install", package="protobuf"
        ) from None
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="paper_alexnet_caffe.proto", package="paper_alexnet_caffe", syntax="proto2"
    )

    def message(name, *fields):
        m = file.message_type.add(name=name)
        for field_name, number, kind, label, type_name, packed in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".paper_alexnet_caffe.{type_name}"
            if packed:
                f.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, True))
    message(
        "BlobProto",
        ("num", 1, F.TYPE_INT32, opt, None, False),
        ("channels", 2, F.TYPE_INT32, opt, None, False),
        ("height", 3, F.TYPE_INT32, opt, None, False),
        ("width", 4, F.TYPE_INT32, opt, None, False),
        ("data", 5, F.TYPE_FLOAT, rep, None, True),
        ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
        ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
    )
    message(
        "LayerParameter",
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("type", 2, F.TYPE_STRING, opt, None, False),
        ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False),
    )
    message(
        "V0LayerParameter",
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("type", 2, F.TYPE_STRING, opt, None, False),
    )
    message(
        "V1LayerParameter",
        ("layer", 1, F.TYPE_MESSAGE, opt, "V0LayerParameter", False),
        ("name", 4, F.TYPE_STRING, opt, None, False),
        ("type", 5, F.TYPE_INT32, opt, None, False),
        ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False),
    )
    message(
        "NetParameter",
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False),
        ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    for name in (
        "BlobShape",
        "BlobProto",
        "LayerParameter",
        "V0LayerParameter",
        "V1LayerParameter",
        "NetParameter",
    ):
        _CLASSES[name] = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"paper_alexnet_caffe.{name}")
        )
    return _CLASSES


def _parse(kind: str, data: bytes, path: str):
    from google.protobuf.message import DecodeError

    msg = _messages()[kind]()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise CaffeError(
            f"{path} is not a Caffe {kind} (truncated, or not a protobuf file: {err})"
        ) from None
    return msg


def _array(blob, where: str) -> np.ndarray:
    """A BlobProto's values in its shape: BlobShape when given, else V1's num x channels x height x width."""
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(d) for d in (blob.num, blob.channels, blob.height, blob.width))
    if int(np.prod(shape)) != values.size:
        raise CaffeError(
            f"{where}: {values.size} values for a blob of shape {shape} (a damaged file)"
        )
    return values.reshape(shape)


def read_caffemodel(path: str) -> Tuple[Dict[str, List[np.ndarray]], int]:
    """{layer name: [weights, bias]} of every learned layer in a .caffemodel, and its format (1: the V1
    ``layers`` of the 2014 release; 2: ``layer``). A V0 file or a file that is not a NetParameter is a
    CaffeError."""
    with open(path, "rb") as handle:
        data = handle.read()
    if not data:
        raise CaffeError(f"{path} is empty")
    net = _parse("NetParameter", data, path)
    if len(net.layer):
        layers, version = (
            [(layer.name, LEARNED.get(layer.type), layer.blobs) for layer in net.layer],
            2,
        )
    elif len(net.layers):
        if any(layer.HasField("layer") for layer in net.layers):
            raise CaffeError(
                f"{path} is a V0 Caffe net (before 2014): upgrade it with Caffe's "
                f"upgrade_net_proto_binary, then convert that"
            )
        layers, version = (
            [(layer.name, V1_LEARNED.get(layer.type), layer.blobs) for layer in net.layers],
            1,
        )
    else:
        raise CaffeError(f"{path} holds no Caffe layers (not a .caffemodel)")
    learned = {
        name: [_array(b, f"{path}: {name}") for b in blobs]
        for name, kind, blobs in layers
        if kind and blobs
    }
    return learned, version


def read_mean(path: str) -> np.ndarray:
    """imagenet_mean.binaryproto (a BlobProto, 1 x 3 x 256 x 256, BGR) as the RGB 3 x 256 x 256 mean image."""
    with open(path, "rb") as handle:
        blob = _parse("BlobProto", handle.read(), path)
    mean = _array(blob, path)
    side = paper.IMAGE_SIZE
    if mean.size != 3 * side * side:
        raise CaffeError(f"{path}: a mean of shape {mean.shape}, not 1 x 3 x {side} x {side}")
    return np.ascontiguousarray(mean.reshape(3, side, side)[::-1])


def bgr_mean_image() -> np.ndarray:
    """Caffe's per-channel mean (B 104, G 117, R 123) as an RGB 3 x 256 x 256 image."""
    side = paper.IMAGE_SIZE
    return np.broadcast_to(
        np.array(BGR_MEAN[::-1], dtype=np.float32)[:, None, None], (3, side, side)
    ).copy()


def to_state_dict(
    blobs: Dict[str, List[np.ndarray]], expected: Dict[str, torch.Tensor], path: str
) -> Dict[str, torch.Tensor]:
    """The ``caffe`` variant's state dict from a caffemodel's blobs: every learned layer present with the shape
    ``expected`` has (inner products may come as 1 x 1 x out x in), conv1 turned from BGR to RGB input."""
    names = list(dict.fromkeys(key.split(".")[0] for key in expected))
    extra = [name for name in blobs if name not in names]
    if extra:
        raise CaffeError(
            f"{path}: learned layer {extra[0]!r} is not in AlexNet ({', '.join(names)}): another net"
        )
    state = {}
    for name in names:
        if name not in blobs:
            raise CaffeError(f"{path}: no learned layer {name!r}: not AlexNet")
        if len(blobs[name]) != 2:
            raise CaffeError(
                f"{path}: layer {name!r} has {len(blobs[name])} blobs, not weights and bias"
            )
        for part, array in zip(("weight", "bias"), blobs[name]):
            want = tuple(expected[f"{name}.{part}"].shape)
            shape = array.shape
            # V1's 1 x 1 x out x in, 1 x 1 x 1 x out
            while array.ndim > len(want) and array.shape[0] == 1:
                array = array[0]
            if array.shape != want:
                raise CaffeError(
                    f"{path}: layer {name!r} {part} has shape {shape}, AlexNet's is {want}"
                )
            state[f"{name}.{part}"] = torch.from_numpy(np.ascontiguousarray(array))
    state["conv1.weight"] = state["conv1.weight"].flip(1).contiguous()  # BGR -> RGB input channels
    return state


def sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
