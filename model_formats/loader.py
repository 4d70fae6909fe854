"""`load_model`: pick the runtime from the model file.

    .onnx            onnxruntime                     (OnnxModel)
    .pmml / .xml     pypmml, after a defusedxml check (PmmlModel)
    .skops           scikit-learn via skops          (SklearnModel)
    .joblib / .pkl   scikit-learn via pickle, only with trust_pickle=True and the file's sha256

The extension chooses, and the file's first bytes must agree with it: a pickle renamed to
``.onnx`` or ``.skops`` is refused before any runtime sees it.
"""
from __future__ import annotations

import functools
import os
import zipfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from model_formats.base import Model, ModelLoadError, release_freed_heap

ONNX_SUFFIXES = (".onnx",)
PMML_SUFFIXES = (".pmml", ".xml")
SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SUPPORTED_SUFFIXES = ONNX_SUFFIXES + PMML_SUFFIXES + SKOPS_SUFFIXES + PICKLE_SUFFIXES


def resolve_path(path_or_uri: str | os.PathLike) -> Path:
    """A local path or a ``file://`` URI; remote schemes are not fetched here."""
    text = os.fspath(path_or_uri)
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file":
            raise ModelLoadError(f"{text}: only local paths and file:// URIs are supported "
                                 f"(scheme {parsed.scheme!r}); copy the model next to the job first")
        text = unquote(parsed.path)
    p = Path(text).expanduser()
    if not p.exists():
        raise ModelLoadError(f"{p}: no such model file")
    if not p.is_file():
        raise ModelLoadError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p}: empty file")
    return p


def sniff(path: Path) -> str:
    """What the file's first bytes say it is: 'zip', 'pickle', 'xml', 'protobuf' or 'unknown'."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:  # pickle protocol 2..5
        return "pickle"
    if head[:2] == b"\x1f\x8b" or head[:3] in (b"ZL\x00",) or head[:4] == b"\x28\xb5\x2f\xfd":
        return "compressed"  # joblib compressed pickle (gzip / zlib / zstd)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<"):
        return "xml"
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42", b"\x52", b"\x62", b"\x72", b"\x0a"):
        return "protobuf"  # ONNX ModelProto starts with a field tag (ir_version = field 1 → 0x08)
    return "unknown"


# Options each runtime takes beyond load_model's own; anything else is refused, never swallowed.
FORMAT_OPTIONS = {
    "onnx": ("inter_op_num_threads",),
    "pmml": (),
    "sklearn": (),
}


def _then_release_freed_heap(load):
    """``load``, then the heap it freed handed back to the OS (:func:`release_freed_heap`)."""
    @functools.wraps(load)
    def loading(*args, **kwargs):
        model = load(*args, **kwargs)
        release_freed_heap()
        return model
    return loading


@_then_release_freed_heap
def load_model(path_or_uri: str | os.PathLike, *, trust_pickle: bool = False, sha256: str | None = None,
               intra_op_num_threads: int | None = 1, trusted_types: list[str] | None = None,
               name: str | None = None, version: str | None = None, input_names: list[str] | None = None,
               **options) -> Model:
    """Load a model file behind the common `Model` interface.

    intra_op_num_threads: onnxruntime threads per session (1 suits one session per Flink slot).
    trusted_types: extra type names a .skops file may instantiate (see ``skops.io.get_untrusted_types``).
    trust_pickle, sha256: both required for .joblib/.pkl — pickle runs code while loading.
    name, version: override what the file says.
    input_names: the input columns, in the model's order, for files that do not name them (an ONNX
        graph with one 2-D input and no ``feature_names`` metadata expects ``x0..xn`` otherwise;
        a scikit-learn estimator fitted on a bare array). Refused where the file names them itself
        differently (PMML, estimators with ``feature_names_in_``).
    options: runtime-specific (ONNX: ``inter_op_num_threads``); unknown keywords raise TypeError.
    """
    p = resolve_path(path_or_uri)
    suffix = p.suffix.lower()
    fmt = ("onnx" if suffix in ONNX_SUFFIXES else "pmml" if suffix in PMML_SUFFIXES
           else "sklearn" if suffix in SKOPS_SUFFIXES + PICKLE_SUFFIXES else None)
    if fmt is not None:
        unknown = sorted(set(options) - set(FORMAT_OPTIONS[fmt]))
        if unknown:
            accepted = ["trust_pickle", "sha256", "intra_op_num_threads", "trusted_types", "name", "version",
                        "input_names", *FORMAT_OPTIONS[fmt]]
            raise TypeError(f"load_model() got unknown keyword argument(s) {unknown} for a {fmt} model; "
                            f"accepted: {', '.join(accepted)}")
    input_names = list(input_names) if input_names is not None else None
    kind = sniff(p)
    if suffix in ONNX_SUFFIXES:
        if kind in ("pickle", "compressed", "zip", "xml"):
            raise ModelLoadError(f"{p.name}: extension says ONNX but the content is {kind}; refused")
        from model_formats.onnx_model import OnnxModel

        return OnnxModel(p, intra_op_num_threads=intra_op_num_threads, name=name, version=version,
                         input_names=input_names, **options)
    if suffix in PMML_SUFFIXES:
        if kind != "xml":
            raise ModelLoadError(f"{p.name}: extension says PMML but the content is not XML ({kind}); refused")
        from model_formats.pmml_model import PmmlModel

        return PmmlModel(p, name=name, version=version, input_names=input_names)
    if suffix in SKOPS_SUFFIXES:
        if kind != "zip" or not zipfile.is_zipfile(p):
            raise ModelLoadError(f"{p.name}: extension says skops but the content is not a skops archive ({kind}); refused")
        from model_formats.sklearn_model import load_skops

        return load_skops(p, trusted_types=trusted_types, name=name, version=version, feature_names=input_names)
    if suffix in PICKLE_SUFFIXES:
        from model_formats.sklearn_model import load_pickle

        return load_pickle(p, trust_pickle=trust_pickle, sha256=sha256, name=name, version=version,
                           feature_names=input_names)
    raise ModelLoadError(f"{p.name}: unsupported model file extension {suffix!r}; "
                         f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
