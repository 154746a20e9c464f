"""The ranking network (RELION's architecture), loading weights safely, and scoring.

:class:`RankerNet` has the layer layout and parameter names of RELION-5's class-ranker
model v1.0, so a RELION state dict loads into it: a CNN on the 64x64 image (widths
16/32/64/128, three stride-2 stages -> 128x8x8), a linear map to a 48-d image vector,
joined to the 24 features, 48 hidden units and one output.

Weights files are read with ``torch.load(weights_only=True)``: nothing in a weights file
is ever executed. Two layouts are accepted (:func:`load_model`):

* ours: ``{"format": "relion_external_rank", "version": 1, "state_dict": ..., "output":
  "sigmoid"|"identity", "tta": bool, "image_norm": "none"|"per_image", "card": json-str}``,
  optionally with ``"members": [state_dict, ...]``: an ensemble of networks of the same
  layout (trained with different seeds) whose scores are averaged, and ``"logit_shift"``:
  added to the logit of the (averaged) score, so that 0.5 falls where the training data
  put the best keep/reject threshold (``python -m ranker.develop train --calibrate_folds``);
* RELION-5's ``v1.0.ckpt``: ``{"model_state_dict": ..., "model_definition": <python
  source>}``. Only the state dict is used; the stored source is ignored, never run.

torch is imported lazily so that reading and writing STAR files stays fast.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

FORMAT = "relion_external_rank"
FEATURE_DIM = 24
IMAGE_PX = 64
SHIPPED_MODEL = "relion_external_rank_v3.pt"


def shipped_model_path(name: str = SHIPPED_MODEL) -> str:
    """The shipped weights file: package data ``ranker/models/`` of an installed package (pip maps
    the repository's ``models/`` there), else ``models/`` of the source checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = (os.path.join(package, "models", name), os.path.join(os.path.dirname(package), "models", name))
    return next((p for p in candidates if os.path.isfile(p)), candidates[0])


DEFAULT_MODEL = shipped_model_path()
# RELION's v1.0 checkpoint also holds two heads its scorer never uses (image-only and
# feature-only); they are dropped when such a checkpoint is loaded.
_RELION_UNUSED_HEADS = ("classifier_images.", "classifier_features.")


def relion5_checkpoint() -> str:
    """Where RELION-5's class ranker keeps its downloaded v1.0 checkpoint
    (``$TORCH_HOME/hub/checkpoints/relion_class_ranker/v1.0.ckpt``, TORCH_HOME defaulting
    to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``). ``--model relion5`` means this file."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints", "relion_class_ranker", "v1.0.ckpt")


IMAGE_NORMS = ("none", "per_image")


def network_images(images: np.ndarray, image_norm: str = "none") -> np.ndarray:
    """The image input of the network, float32 (K, 64, 64).

    "none": the raw values, as RELION feeds its network (and its checkpoint expects).
    "per_image": each image shifted to mean 0 and scaled to standard deviation 1, so that
    the CNN sees shapes, not the intensity scale, which varies with SNR and particle number
    from job to job (the 24 features still carry the intensities)."""
    images = np.asarray(images, np.float32)
    if image_norm == "none":
        return images
    if image_norm != "per_image":
        raise ModelError(f"unknown image normalisation {image_norm!r}; use one of {', '.join(IMAGE_NORMS)}")
    mean = images.mean(axis=(-2, -1), keepdims=True)
    std = images.std(axis=(-2, -1), keepdims=True)
    return ((images - mean) / (std + 1e-6)).astype(np.float32)


class ModelError(ValueError):
    """A weights file cannot be used: the message names the file and the problem."""


def build_net(dropout: float = 0.0):
    """A fresh :class:`RankerNet` (defined inside so torch is imported only when needed)."""
    import torch.nn as nn

    def conv(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)

    class RankerNet(nn.Module):
        """Input: images (B, 1, 64, 64) raw values and features (B, 24). Output: (B, 1)."""

        def __init__(self):
            super().__init__()
            layers = []
            for cin, width in ((1, 16), (32, 32), (64, 64)):
                # two 3x3 convolutions at this width, then a stride-2 one doubling it;
                # the Dropout/ReLU positions give RELION's Sequential indices.
                layers += [conv(cin, width), nn.ReLU(inplace=True), nn.Dropout(dropout),
                           conv(width, width), nn.ReLU(inplace=True),
                           conv(width, 2 * width, stride=2), nn.Dropout(dropout)]
            self.cnn_layers = nn.Sequential(*layers)
            self.feature_extractor = nn.Sequential(nn.Linear(128 * 8 * 8, 48))
            self.classifier_images_and_features = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(48 + FEATURE_DIM, 48), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(48, 1))

        def forward(self, images, features):
            import torch
            x = self.feature_extractor(torch.flatten(self.cnn_layers(images), 1))
            return self.classifier_images_and_features(torch.cat([x, features], 1))

    return RankerNet()


@dataclass
class Ranker:
    """Loaded network(s) ready to score. ``members``: the networks (one, or an ensemble whose
    scores are averaged). ``output`` is "sigmoid" (ours: logits -> [0, 1]) or "identity"
    (RELION's checkpoint: its raw output is the score)."""

    members: list
    path: str
    output: str = "sigmoid"
    tta: bool = False
    image_norm: str = "none"
    logit_shift: float = 0.0
    card: dict = field(default_factory=dict)
    device: str = "cpu"
    job_context: list | None = None  # (a, b, c, lift) of ranker.runtime.context, or None

    @property
    def net(self):
        """The first (for RELION's checkpoint: the only) network."""
        return self.members[0]

    def score(self, vectors: np.ndarray, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """Per-class scores (float32, shape (K,)) for normalised vectors (K, 24) and images
        (K, 64, 64): the network score with ``logit_shift`` applied; each class on its own."""
        scores = self.network_scores(vectors, images, batch)
        return shift_scores(scores, self.logit_shift) if self.logit_shift else scores

    def score_job(self, vectors: np.ndarray, images: np.ndarray, use_context: bool = True) -> np.ndarray:
        """Scores (float32, shape (K,)) of ALL scored classes of ONE 2D classification: with the
        model's job-context stage (ranker.runtime.context) when it has one and ``use_context``, else
        :meth:`score`."""
        if not self.context_applies(use_context):
            return self.score(vectors, images)
        from .context import apply_job_context

        return apply_job_context(self.network_scores(vectors, images), self.job_context, self.logit_shift)

    def context_applies(self, use_context: bool = True) -> bool:
        """Whether :meth:`score_job` reads the scores in job context (the model has the stage)."""
        return bool(use_context) and self.job_context is not None

    def network_scores(self, vectors: np.ndarray, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """The networks' own scores (float32, (K,)): with ``tta`` the mean over the 8
        rotations/flips of the image; with an ensemble, the mean over its members."""
        import torch

        if len(vectors) == 0:
            return np.zeros(0, np.float32)
        images = network_images(images, self.image_norm)
        out = []
        with torch.inference_mode():
            for s in range(0, len(vectors), batch):
                feats = torch.from_numpy(np.ascontiguousarray(vectors[s:s + batch], np.float32)).to(self.device)
                imgs = torch.from_numpy(np.ascontiguousarray(images[s:s + batch], np.float32))[:, None]
                imgs = imgs.to(self.device)
                views = dihedral_views(imgs) if self.tta else [imgs]
                logits = torch.stack([net(v, feats)[:, 0] for net in self.members for v in views])
                scores = torch.sigmoid(logits) if self.output == "sigmoid" else logits
                out.append(scores.mean(0).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def shift_scores(scores: np.ndarray, logit_shift: float) -> np.ndarray:
    """sigmoid(logit(scores) + logit_shift), float32; a monotone map of (0, 1) onto itself."""
    from .context import logit

    return (1 / (1 + np.exp(-(logit(scores, 1e-7) + logit_shift)))).astype(np.float32)


def score_when_ready(inbox, path, device, threads, use_context=True):
    """Load the model now, then score what arrives in ``inbox`` ((vectors, images)).

    Meant to run in a :class:`ranker.background.Background` process, so that importing
    torch overlaps with reading data.star. Returns (scores, path, device, whether the job
    context was applied, timing); timing: {"torch": torch's version, "began", "imported",
    "loaded": time.perf_counter() when this began, when torch was imported, when the model
    was loaded} (perf_counter is system-wide on Linux, so the parent can compare). Only
    plain values go back: unpickling e.g. torch's own version object would import torch
    in the parent."""
    began = time.perf_counter()
    import torch
    imported = time.perf_counter()
    ranker = load_model(path, device=device, threads=threads)
    timing = {"torch": str(torch.__version__), "began": began, "imported": imported, "loaded": time.perf_counter()}
    vectors, images = inbox.get()
    return (ranker.score_job(vectors, images, use_context), ranker.path, ranker.device,
            ranker.context_applies(use_context), timing)


def dihedral_views(imgs):
    """The 8 rotations/flips of a (B, 1, H, W) image batch."""
    import torch

    views = []
    for flipped in (imgs, torch.flip(imgs, dims=(-1,))):
        views += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return views


def pick_device(request: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda[:N]' must be available."""
    import torch

    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {request}: no CUDA GPU is available on this machine")
    if request != "cpu" and not request.startswith("cuda"):
        raise ModelError(f"--device {request}: use auto, cpu, cuda or cuda:N")
    return request


def _state_dict_from(obj, path: str):
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: not a relion_external_rank weights file or RELION class-ranker checkpoint")
    if obj.get("format") == FORMAT:
        image_norm = obj.get("image_norm", "none")
        if image_norm not in IMAGE_NORMS:
            raise ModelError(f"{path}: unknown image normalisation {image_norm!r}")
        states = obj.get("members") or [obj["state_dict"]]
        context = obj.get("job_context")
        if context is not None and (len(context) not in (3, 4) or not all(np.isfinite(float(v)) for v in context)):
            raise ModelError(f"{path}: job_context must be three or four finite numbers (a, b, c[, lift])")
        return states, obj.get("output", "sigmoid"), bool(obj.get("tta", False)), image_norm, \
            float(obj.get("logit_shift", 0.0)), json.loads(obj.get("card", "{}")), \
            [float(v) for v in context] if context is not None else None
    if "model_state_dict" in obj:
        state = {k: v for k, v in obj["model_state_dict"].items() if not k.startswith(_RELION_UNUSED_HEADS)}
        return [state], "identity", False, "none", 0.0, {"source": "RELION class-ranker checkpoint (state dict only)"}, None
    raise ModelError(f"{path}: a torch file, but neither our weights format nor a RELION checkpoint "
                     f"(keys: {', '.join(sorted(map(str, obj))[:6])})")


def _first_line(exc: BaseException | str, default: str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else default


def _check_finite(states, logit_shift: float, path: str) -> None:
    """Refuse weights holding NaN or Inf (they would score every class NaN: nothing selected)."""
    import torch

    if not np.isfinite(logit_shift):
        raise ModelError(f"{path}: logit_shift is {logit_shift}, not a finite number")
    for state in states:
        if not isinstance(state, dict):
            raise ModelError(f"{path}: the weights are not a state dict")
        for name, tensor in state.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ModelError(f"{path}: weights {name} hold NaN or Inf values (a damaged or diverged model)")


def model_path(name: str | None = None) -> str:
    """The weights file ``--model name`` means: the shipped model when none is given,
    RELION-5's downloaded checkpoint for "relion5", else the path as given."""
    path = name or DEFAULT_MODEL
    return relion5_checkpoint() if path == "relion5" else path


def load_model(path: str | None = None, device: str = "auto", threads: int | None = None) -> Ranker:
    """Load weights from ``path`` (default: the shipped model) onto ``device``.

    Raises ModelError if the file is missing, truncated, not ours, or holds anything
    that would need code execution to load (pickled objects are refused, never run).
    """
    import pickle
    import torch

    path = model_path(path)
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    from .inputs import InputError, check_input

    try:
        check_input(path, "weights file")
    except FileNotFoundError:
        if path == DEFAULT_MODEL:
            raise ModelError(f"{path}: the default model is not installed; give --model PATH "
                             "(our weights file or RELION-5's v1.0.ckpt)") from None
        raise ModelError(f"{path}: model file not found") from None
    except (InputError, OSError) as exc:
        raise ModelError(str(exc) if isinstance(exc, InputError) else f"{path}: cannot be read ({exc.strerror})") \
            from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip() or text  # torch's reason, without its preamble
        raise ModelError(f"{path}: refused: not plain weights (the file is damaged, or holds objects that "
                         f"would need code to run: {_first_line(detail, 'unsafe content')})") from None
    except Exception as exc:  # noqa: BLE001 - an empty or garbage file fails in many ways inside torch
        raise ModelError(f"{path}: not a readable torch weights file ({_first_line(exc, type(exc).__name__)})") \
            from None
    try:
        states, output, tta, image_norm, logit_shift, card, job_context = _state_dict_from(obj, path)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a torch file of the right kind holding wrong values
        raise ModelError(f"{path}: not a usable weights file ({_first_line(exc, type(exc).__name__)})") from None
    _check_finite(states, logit_shift, path)
    dev = pick_device(device)
    nets = []
    for state in states:
        net = build_net()
        try:
            net.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: weights do not fit the ranker network "
                             f"({str(exc).splitlines()[0][:160]})") from None
        nets.append(net.to(dev).eval())
    return Ranker(members=nets, path=path, output=output, tta=tta, image_norm=image_norm, logit_shift=logit_shift,
                  card=card, device=dev, job_context=job_context)


def save_model(net, path: str, card: dict, output: str = "sigmoid", tta: bool = False,
               image_norm: str = "none", logit_shift: float = 0.0, job_context=None) -> None:
    """Save weights in our format (tensors and plain values only), atomically.
    ``net``: one network, or a list of them (an ensemble; scores are averaged);
    ``job_context``: (a, b, c[, lift]) of ranker.runtime.context, or None."""
    import torch

    nets = list(net) if isinstance(net, (list, tuple)) else [net]
    states = [{k: v.detach().cpu().contiguous() for k, v in n.state_dict().items()} for n in nets]
    obj = {"format": FORMAT, "version": 1, "state_dict": states[0], "output": output, "tta": bool(tta),
           "image_norm": image_norm, "logit_shift": float(logit_shift), "card": json.dumps(card, sort_keys=True)}
    if len(states) > 1:
        obj["members"] = states
    if job_context is not None:
        obj["job_context"] = [float(v) for v in job_context]
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)
