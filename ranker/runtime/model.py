"""The ranking network (RELION's architecture), loading weights safely, and scoring.

The network's layout (RELION-5's class-ranker model v1.0, so a RELION state dict loads into
it) is defined once, in :mod:`ranker.runtime.network`: a CNN on the 64x64 image (widths
16/32/64/128, three stride-2 stages -> 128x8x8), a linear map to a 48-d image vector,
joined to the 24 features, 48 hidden units and one output. :func:`build_net` makes the
torch module of it (training, GPUs); :class:`ranker.runtime.network.NumpyNet` runs it with
numpy, which is how a CPU scores: no torch import (1.5-3 s of CPU and 220 MB) for a job.

Weights files (:func:`load_model`; :func:`save_model` writes the first, or the second for a
``.pt`` name):

* ours, ``.npz`` (numpy's zip of arrays, read with ``np.load(allow_pickle=False)``: nothing
  in it is ever executed, and torch is not needed): ``meta`` (a JSON string: ``format``
  "relion_external_rank", ``version`` 2, ``networks`` N, ``output`` "sigmoid"|"identity",
  ``tta``, ``image_norm`` "none"|"per_image", ``logit_shift``, ``job_context`` and the model
  ``card``) and each network's parameters as ``"<i>/<state-dict name>"`` (float32);
* ours, torch file (``.pt``, version 1): ``{"format": "relion_external_rank", "version": 1,
  "state_dict": ..., "output", "tta", "image_norm", "card": json-str}``, optionally
  ``"members": [state_dict, ...]``, ``"logit_shift"`` and ``"job_context"``;
* RELION-5's ``v1.0.ckpt``: ``{"model_state_dict": ..., "model_definition": <python
  source>}``. Only the state dict is used; the stored source is ignored, never run.

Torch files are read with ``torch.load(weights_only=True)``. ``members``: an ensemble of
networks (different seeds) whose scores are averaged; ``logit_shift`` is added to the logit
of the (averaged) score, so that 0.5 falls where the training data put the best keep/reject
threshold; ``job_context``: ranker.runtime.context's stage.
"""

from __future__ import annotations

import json
import os
import time
import zipfile

import numpy as np

from .context import N_LIKENESS, N_SIGNAL
from .network import CNN_LENGTH, CONVS, FEATURE_DIM, HEAD_LENGTH, IMAGE_PX, LINEARS, NumpyNet, check_state

FORMAT = "relion_external_rank"
NPZ_VERSION = 2
SHIPPED_MODEL = "relion_external_rank_v7.npz"
NUMPY_BATCH = 8  # images per numpy forward batch (about 2.5 MB of work arrays each)
FEATURE_VECTOR = LINEARS[0][2]  # the CNN's image vector (48)
__all__ = ["FEATURE_DIM", "IMAGE_PX", "ModelError", "Ranker", "build_net", "load_model", "save_model"]


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
    """A fresh torch module of the network (:mod:`ranker.runtime.network`'s layout; defined
    inside so that torch is imported only when needed)."""
    import torch.nn as nn

    def sequential(layers, at, length):
        """``layers`` (index, module, ReLU after) in a Sequential of ``length``, Dropout elsewhere."""
        out = []
        for index, module, relu in layers:
            out += [nn.Dropout(dropout) for _ in range(index - len(out))]
            out += [module] + ([nn.ReLU(inplace=True)] if relu else [])
        out += [nn.Dropout(dropout) for _ in range(length - len(out))]
        assert [i for i, m in enumerate(out) if isinstance(m, (nn.Conv2d, nn.Linear))] == at
        return nn.Sequential(*out)

    class RankerNet(nn.Module):
        """Input: images (B, 1, 64, 64) and features (B, 24). Output: (B, 1)."""

        def __init__(self):
            super().__init__()
            self.cnn_layers = sequential(
                [(i, nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1), relu)
                 for i, cin, cout, stride, relu in CONVS], [c[0] for c in CONVS], CNN_LENGTH)
            (fe_name, fe_in, fe_out, _), *head = LINEARS
            self.feature_extractor = nn.Sequential(nn.Linear(fe_in, fe_out))
            index = [int(name.rsplit(".", 1)[1]) for name, *_ in head]
            self.classifier_images_and_features = sequential(
                [(i, nn.Linear(fin, fout), relu) for i, (_n, fin, fout, relu) in zip(index, head)], index,
                HEAD_LENGTH)

        def image_vector(self, images):
            import torch
            return self.feature_extractor(torch.flatten(self.cnn_layers(images), 1))

        def forward(self, images, features):
            import torch
            return self.classifier_images_and_features(torch.cat([self.image_vector(images), features], 1))

    return RankerNet()


class Ranker:
    """Loaded network(s) ready to score.

    ``states``: each network's weights (state-dict name -> float32 array); ``members``: the
    same as torch modules (made on first use; setting it replaces the networks). On the CPU
    the networks run in numpy (:class:`ranker.runtime.network.NumpyNet`), on a GPU in torch.
    Several networks form an ensemble whose scores are averaged. ``output`` is "sigmoid"
    (ours: logits -> [0, 1]) or "identity" (RELION's checkpoint: its raw output is the score)."""

    def __init__(self, members=None, path: str = "", output: str = "sigmoid", tta: bool = False,
                 image_norm: str = "none", logit_shift: float = 0.0, card: dict | None = None, device: str = "cpu",
                 job_context: list | None = None, states: list | None = None):
        self._nets = list(members) if members is not None else None
        self._states = list(states) if states is not None else None
        self._numpy_nets = None
        self._precomputed: dict = {}
        self.path, self.output, self.tta, self.image_norm = path, output, tta, image_norm
        self.logit_shift, self.card, self.device, self.job_context = logit_shift, card or {}, device, job_context
        self.load_seconds = 0.0

    @property
    def engine(self) -> str:
        """"numpy" on the CPU, "torch" on a GPU."""
        return "numpy" if self.device == "cpu" else "torch"

    @property
    def members(self) -> list:
        if self._nets is None:
            import torch

            nets = []
            for state in self._states:
                net = build_net()
                net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
                nets.append(net.to(self.device).eval())
            self._nets = nets
        return self._nets

    @members.setter
    def members(self, nets) -> None:
        self._nets, self._states, self._numpy_nets, self._precomputed = list(nets), None, None, {}

    @property
    def net(self):
        """The first (for RELION's checkpoint: the only) network, as a torch module."""
        return self.members[0]

    @property
    def states(self) -> list:
        if self._states is None:
            self._states = [{k: v.detach().cpu().float().numpy() for k, v in n.state_dict().items()}
                            for n in self._nets]
        return self._states

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

        return apply_job_context(self.network_scores(vectors, images), self.job_context, self.logit_shift, images,
                                 vectors)

    def context_applies(self, use_context: bool = True) -> bool:
        """Whether :meth:`score_job` reads the scores in job context (the model has the stage)."""
        return bool(use_context) and self.job_context is not None

    def network_scores(self, vectors: np.ndarray, images: np.ndarray, batch: int = 512) -> np.ndarray:
        """The networks' own scores (float32, (K,)): with ``tta`` the mean over the 8
        rotations/flips of the image; with an ensemble, the mean over its members. Images
        given to :meth:`precompute` before are not run through the CNN again."""
        if len(vectors) == 0:
            return np.zeros(0, np.float32)
        images = np.asarray(images, np.float32)
        keys = [self._key(im) for im in images]
        todo = sorted({j for j, k in enumerate(keys) if k not in self._precomputed})
        fresh = dict(zip((keys[j] for j in todo), np.moveaxis(self._image_vectors(images[todo], batch), 2, 0))) \
            if todo else {}
        vecs = np.stack([self._precomputed[k] if k in self._precomputed else fresh[k] for k in keys],
                        axis=2)  # members, views, K, 48
        heads = [n.head for n in self._numpy()] if self.engine == "numpy" else [_numpy_head(s) for s in self.states]
        feats = np.ascontiguousarray(vectors, np.float32)
        logits = np.stack([head(v, feats) for head, per_view in zip(heads, vecs) for v in per_view])
        scores = 1 / (1 + np.exp(-logits.astype(np.float64))) if self.output == "sigmoid" else logits
        return scores.mean(0).astype(np.float32)

    def precompute(self, images: np.ndarray) -> int:
        """Run the CNN on images (K, 64, 64) now (the costly part of scoring, which needs no
        features), so that scoring them later is quick. Returns K."""
        images = np.asarray(images, np.float32)
        if len(images):
            vecs = np.moveaxis(self._image_vectors(images), 2, 0)  # K, members, views, 48
            self._precomputed.update(zip(map(self._key, images), vecs))
        return len(images)

    def precomputed(self, images: np.ndarray) -> int:
        """How many of ``images`` :meth:`precompute` has done."""
        return sum(self._key(im) in self._precomputed for im in np.asarray(images, np.float32))

    def precompute_from(self, work: "CNNWork") -> int:
        """Take the image vectors a :class:`CNNWork` has made (as :meth:`precompute`)."""
        n = work.ready_count
        vecs = np.moveaxis(work.result[:, :, :n], 2, 0)  # K, members, views, 48
        self._precomputed.update(zip(map(self._key, work.images[:n]), vecs))
        return n

    def _key(self, image: np.ndarray):
        import hashlib

        return self.tta, self.image_norm, hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=20).digest()

    def _numpy(self) -> list:
        if self._numpy_nets is None:
            self._numpy_nets = [NumpyNet(s) for s in self.states]
        return self._numpy_nets

    def _image_vectors(self, images: np.ndarray, batch: int = 512, members=None) -> np.ndarray:
        """(members, views, K, 48): each network's image vector of each view of each image
        (``members``: these networks only, numpy engine)."""
        views = dihedral_views(network_images(images, self.image_norm)) if self.tta else \
            [network_images(images, self.image_norm)]
        if self.engine == "numpy":
            work = self.__dict__.setdefault("_work", {})  # work arrays shared by the networks, kept
            nets = self._numpy() if members is None else [self._numpy()[m] for m in members]
            return np.stack([[n.embed(v, min(batch, NUMPY_BATCH), work) for v in views] for n in nets])
        import torch

        out = []
        with torch.inference_mode():
            for net in self.members:
                per_view = []
                for v in views:
                    x = torch.from_numpy(np.ascontiguousarray(v))[:, None]
                    per_view.append(np.concatenate([net.image_vector(x[s:s + batch].to(self.device)).float().cpu().numpy()
                                                    for s in range(0, len(x), batch)]))
                out.append(per_view)
        return np.asarray(out, np.float32)


class CNNWork:
    """The image vectors of ``count`` images (64 x 64, given by :meth:`fill`) by every
    network of a numpy-engine :class:`Ranker`, in units of one network x ``batch`` images,
    done by whichever processes call :meth:`work`. Made before a fork: the images, the unit
    counter and ``result`` ((members, views, count, 48) float32) live in shared memory. So
    the job's background process makes the images and starts on them while data.star is
    read, and the job's own process takes the units left once its features are done (on
    two cores, the networks' 1.8 s of CPU on the 1M job's 200 classes were the longest
    part). Results do not depend on who did a unit."""

    def __init__(self, ranker: Ranker, count: int, batch: int = NUMPY_BATCH):
        import multiprocessing as mp

        self.ranker, self.count, self.batch = ranker, int(count), batch
        members, views = len(ranker.states), 8 if ranker.tta else 1
        self.units = members * -(-self.count // batch)
        self.images = _shared_floats((self.count, IMAGE_PX, IMAGE_PX))
        self.result = _shared_floats((members, views, self.count, FEATURE_VECTOR))
        try:
            ctx = mp.get_context("fork")
            self._next, self._state, self._ready = ctx.Value("l", 0), ctx.Value("b", 0), ctx.Event()
        except ValueError:  # no fork here: one process does everything
            self._next, self._state, self._ready = _Counter(), _Counter(), _Set()

    def fill(self, make) -> None:
        """Put the images in: ``make()`` -> (count, 64, 64) array, or None (then no unit is
        done: the images are left to the scoring). Then :meth:`work` may begin. Called by
        several processes, the first makes them and the others wait."""
        with self._state.get_lock():
            if self._ready.wait(0):
                return
            try:
                images = make()
                if images is not None and images.shape == self.images.shape:
                    self.images[...] = images
                    self._state.value = 1
            except Exception:  # noqa: BLE001 - only a head start: the scores are made in any case
                pass
            finally:
                self._ready.set()

    @property
    def ready_count(self) -> int:
        """How many images there are vectors for (after :meth:`work`)."""
        return self.count if self._state.value == 1 else 0

    def work(self, alive=lambda: True) -> int:
        """Do units until none is left (once the images are in; ``alive()`` False: their
        maker died, so do nothing); returns how many this call did."""
        while not self._ready.wait(0.05):
            if not alive():
                return 0
        if self._state.value != 1:
            return 0
        done = 0
        while True:
            with self._next.get_lock():
                unit = self._next.value
                if unit >= self.units:
                    return done
                self._next.value = unit + 1
            j, m = divmod(unit, len(self.ranker.states))
            s = slice(j * self.batch, (j + 1) * self.batch)
            self.result[m, :, s] = self.ranker._image_vectors(self.images[s], self.batch, members=[m])[0]
            done += 1


def _shared_floats(shape: tuple) -> np.ndarray:
    """A float32 array in anonymous shared memory (shared with forked children)."""
    import mmap

    size = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(1, size * 4)), np.float32, count=size).reshape(shape)


class _Set:
    """multiprocessing.Event's wait/set within one process."""

    def __init__(self):
        self.done = False

    def wait(self, timeout=None) -> bool:
        return self.done

    def set(self) -> None:
        self.done = True


class _Counter:
    value = 0

    @staticmethod
    def get_lock():
        import contextlib

        return contextlib.nullcontext()


def _numpy_head(state: dict):
    """The classifier part of a network (image vector + features -> logit) in numpy."""
    layers = [(np.asarray(state[f"{n}.weight"], np.float32).T, np.asarray(state[f"{n}.bias"], np.float32), relu)
              for n, _fin, _fout, relu in LINEARS[1:]]

    def head(image_vectors, features):
        x = np.concatenate([image_vectors, features], axis=1)
        for w, b, relu in layers:
            x = x @ w + b
            if relu:
                np.maximum(x, 0, out=x)
        return x[:, 0]
    return head


def shift_scores(scores: np.ndarray, logit_shift: float) -> np.ndarray:
    """sigmoid(logit(scores) + logit_shift), float32; a monotone map of (0, 1) onto itself."""
    from .context import logit

    return (1 / (1 + np.exp(-(logit(scores, 1e-7) + logit_shift)))).astype(np.float32)


def dihedral_views(images: np.ndarray) -> list:
    """The 8 rotations/flips of an image stack (K, H, W), each contiguous."""
    return [np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1))) for x in (images, images[..., ::-1]) for k in range(4)]


def score_when_ready(inbox, path, device, threads, use_context=True, early=None):
    """Load the model, run the CNN on the images ``early()`` returns (if given: the classes'
    network images, known before data.star is read), then score what arrives in ``inbox``
    ((vectors, images)).

    Meant to run in a :class:`ranker.background.Background` process, alongside the particle
    count. Returns (scores, path, device, engine, whether the job context was applied, timing);
    timing: {"began", "loaded", "early_done": time.perf_counter() when this began, when the
    model was loaded, when the early images were done (perf_counter is system-wide on Linux,
    so the parent can compare); "n_early", "reused": images run early, and how many of the
    scored ones were among them; "torch": torch's version if it was imported, else None}.
    Only plain values go back: unpickling e.g. torch's own version object would import torch
    in the parent."""
    import sys
    import threading

    began = time.perf_counter()
    got: list = []

    def fetch():  # alongside the model's loading (and torch's import): early() may wait on a pipe
        try:
            got.append(early())
        except Exception:  # noqa: BLE001 - only a head start: the scores are made below in any case
            got.append(None)

    fetcher = threading.Thread(target=fetch, daemon=True) if early is not None else None
    if fetcher is not None:
        fetcher.start()
    ranker = load_model(path, device=device, threads=threads)
    loaded = time.perf_counter()
    n_early = 0
    if fetcher is not None:
        fetcher.join()
        n_early = ranker.precompute(got[0]) if got and got[0] is not None else 0
    early_done = time.perf_counter()
    vectors, images = inbox.get()
    reused = ranker.precomputed(images) if n_early else 0
    scores = ranker.score_job(vectors, images, use_context)
    torch = sys.modules.get("torch")
    timing = {"began": began, "loaded": loaded, "early_done": early_done, "n_early": n_early, "reused": reused,
              "torch": str(torch.__version__) if torch is not None else None}
    return scores, ranker.path, ranker.device, ranker.engine, ranker.context_applies(use_context), timing


def cuda_possible() -> bool:
    """Whether a GPU could be usable, found without importing torch: an NVIDIA (or AMD ROCm)
    device node exists and CUDA_VISIBLE_DEVICES does not hide every device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def pick_device(request: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda[:N]' must be available.
    torch is imported only to look for a GPU, and only where one could be."""
    if request == "cpu":
        return "cpu"
    if request != "auto" and not request.startswith("cuda"):
        raise ModelError(f"--device {request}: use auto, cpu, cuda or cuda:N")
    if request == "auto" and not cuda_possible():
        return "cpu"
    import torch

    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ModelError(f"--device {request}: no CUDA GPU is available on this machine")
    return request


def uses_torch(name: str | None, device: str) -> bool:
    """Whether loading ``--model name`` for ``--device device`` will import torch (a torch
    weights file, or a GPU that may be used)."""
    path = model_path(name)
    return (device != "cpu" and (device != "auto" or cuda_possible())) or (os.path.isfile(path) and not _is_npz(path))


def _first_line(exc: BaseException | str, default: str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else default


def model_path(name: str | None = None) -> str:
    """The weights file ``--model name`` means: the shipped model when none is given,
    RELION-5's downloaded checkpoint for "relion5", else the path as given."""
    path = name or DEFAULT_MODEL
    return relion5_checkpoint() if path == "relion5" else path


def _is_npz(path: str) -> bool:
    """Our numpy weights file (a zip holding meta.npy), as opposed to a torch file."""
    try:
        with zipfile.ZipFile(path) as zf:
            return "meta.npy" in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_model(path: str | None = None, device: str = "auto", threads: int | None = None) -> Ranker:
    """Load weights from ``path`` (default: the shipped model) for ``device``.

    Raises ModelError if the file is missing, truncated, not ours, holds NaN/Inf weights,
    or holds anything that would need code execution to load (pickled objects are refused,
    never run)."""
    began = time.perf_counter()
    path = model_path(path)
    from .inputs import InputError, check_input

    try:
        check_input(path, "weights file")  # a FIFO, device or directory is refused at once
    except FileNotFoundError:
        if path == DEFAULT_MODEL:
            raise ModelError(f"{path}: the default model is not installed; give --model PATH "
                             "(our weights file or RELION-5's v1.0.ckpt)") from None
        raise ModelError(f"{path}: model file not found") from None
    except (InputError, OSError) as exc:
        raise ModelError(str(exc) if isinstance(exc, InputError) else f"{path}: cannot be read ({exc.strerror})") \
            from None
    dev = pick_device(device)
    if path.endswith(".npz") or _is_npz(path):
        states, settings = _read_npz(path)
    else:
        states, settings = _read_torch(path)
    states = [_checked_state(s, path) for s in states]
    if dev != "cpu" and threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    ranker = Ranker(states=states, path=path, device=dev, **settings)
    if dev != "cpu":
        ranker.members  # noqa: B018 - made now, on the GPU
    ranker.load_seconds = time.perf_counter() - began
    return ranker


def _settings(meta: dict, path: str, card) -> dict:
    image_norm = meta.get("image_norm", "none")
    if image_norm not in IMAGE_NORMS:
        raise ModelError(f"{path}: unknown image normalisation {image_norm!r}")
    output = meta.get("output", "sigmoid")
    if output not in ("sigmoid", "identity"):
        raise ModelError(f"{path}: unknown output {output!r}")
    context = meta.get("job_context")
    try:
        context = [float(v) for v in context] if context is not None else None
        logit_shift = float(meta.get("logit_shift", 0.0))
    except (TypeError, ValueError):
        raise ModelError(f"{path}: job_context and logit_shift must be numbers") from None
    if context is not None and (len(context) not in (3, 4, N_LIKENESS, N_SIGNAL) or not all(np.isfinite(context))):
        raise ModelError(f"{path}: job_context must be three, four, {N_LIKENESS} or {N_SIGNAL} finite numbers "
                         f"(a, b, c[, lift][, d, e, f, L0, own0][, g, S0])")
    if not np.isfinite(logit_shift):
        raise ModelError(f"{path}: logit_shift must be a finite number")
    return {"output": output, "tta": bool(meta.get("tta", False)), "image_norm": image_norm,
            "logit_shift": logit_shift, "card": card, "job_context": context}


def _read_npz(path: str):
    """(states, settings) from our .npz weights file; no pickle is ever read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"][()]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ModelError(f"{path}: a numpy file, but not our weights format")
            if meta.get("version") != NPZ_VERSION:
                raise ModelError(f"{path}: weights format version {meta.get('version')!r}; this program reads "
                                 f"version {NPZ_VERSION} (a newer relion_external_rank may be needed)")
            n = meta.get("networks")
            if not isinstance(n, int) or n < 1:
                raise ModelError(f"{path}: 'networks' must be a positive number")
            states = [{} for _ in range(n)]
            for key in npz.files:
                if key == "meta":
                    continue
                index, _, name = key.partition("/")
                if not index.isdigit() or int(index) >= n:
                    raise ModelError(f"{path}: unexpected array {key!r}")
                states[int(index)][name] = npz[key]
    except ModelError:
        raise
    except ValueError as exc:  # np.load refuses object arrays (pickles) when allow_pickle=False
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise ModelError(f"{path}: refused: not plain weights (the file is damaged, or holds objects "
                             f"that would need code to run)") from None
        raise ModelError(f"{path}: not a readable weights file ({_first_line(exc, type(exc).__name__)})") from None
    except Exception as exc:  # noqa: BLE001 - an empty, cut or garbage file fails in many ways inside numpy
        raise ModelError(f"{path}: not a readable weights file ({_first_line(exc, type(exc).__name__)})") from None
    card = meta.get("card", {})
    return states, _settings(meta, path, card if isinstance(card, dict) else {})


def _read_torch(path: str):
    """(states, settings) from a torch file: ours (version 1) or RELION's checkpoint."""
    import pickle

    import torch

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
        return _torch_states(obj, path, torch)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a torch file of the right kind holding wrong values
        raise ModelError(f"{path}: not a usable weights file ({_first_line(exc, type(exc).__name__)})") from None


def _torch_states(obj, path: str, torch):
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: not a relion_external_rank weights file or RELION class-ranker checkpoint")
    if obj.get("format") == FORMAT:
        states = obj.get("members") or [obj.get("state_dict")]
        try:
            card = json.loads(obj.get("card", "{}"))
        except (TypeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: not a usable weights file (its card is not JSON: "
                             f"{_first_line(exc, 'bad card')})") from None
        settings = _settings(obj, path, card if isinstance(card, dict) else {})
    elif "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        states = [{k: v for k, v in obj["model_state_dict"].items() if not str(k).startswith(_RELION_UNUSED_HEADS)}]
        settings = _settings({"output": "identity"}, path,
                             {"source": "RELION class-ranker checkpoint (state dict only)"})
    else:
        raise ModelError(f"{path}: a torch file, but neither our weights format nor a RELION checkpoint "
                         f"(keys: {', '.join(sorted(map(str, obj))[:6])})")
    out = []
    for state in states:
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{path}: weights do not fit the ranker network (not a state dict of tensors)")
        out.append({str(k): v.detach().cpu().float().numpy() for k, v in state.items()})
    return out, settings


def _checked_state(state: dict, path: str) -> dict:
    """The state as float32 arrays, if it fits the network and every weight is finite."""
    problem = check_state(state)
    if problem:
        raise ModelError(f"{path}: weights do not fit the ranker network ({problem})")
    out = {}
    for k, v in state.items():
        if not np.issubdtype(np.asarray(v).dtype, np.floating):
            raise ModelError(f"{path}: weights do not fit the ranker network ({k} is not floating point)")
        out[k] = np.asarray(v, np.float32)
        if not np.isfinite(out[k]).all():
            raise ModelError(f"{path}: weights {k} hold NaN or Inf values (a damaged or diverged model)")
    return out


def save_model(net, path: str, card: dict, output: str = "sigmoid", tta: bool = False,
               image_norm: str = "none", logit_shift: float = 0.0, job_context=None) -> None:
    """Save weights in our format, atomically: ``.npz`` (readable without torch), or our
    torch format when ``path`` ends in ``.pt``. ``net``: one network or a list (an ensemble;
    scores are averaged), as torch modules or state dicts; ``job_context``: (a, b, c[,
    lift]) of ranker.runtime.context, or None."""
    nets = list(net) if isinstance(net, (list, tuple)) else [net]
    states = [_as_arrays(n) for n in nets]
    for s in states:
        problem = check_state(s)
        if problem:
            raise ModelError(f"{path}: not the ranker network's weights ({problem})")
    meta = {"format": FORMAT, "output": output, "tta": bool(tta), "image_norm": image_norm,
            "logit_shift": float(logit_shift)}
    if job_context is not None:
        meta["job_context"] = [float(v) for v in job_context]
    tmp = path + ".tmp"
    if path.endswith(".pt"):
        import torch

        obj = dict(meta, version=1, state_dict={k: torch.from_numpy(v) for k, v in states[0].items()},
                   card=json.dumps(card, sort_keys=True))
        if len(states) > 1:
            obj["members"] = [{k: torch.from_numpy(v) for k, v in s.items()} for s in states]
        torch.save(obj, tmp)
    else:
        meta = dict(meta, version=NPZ_VERSION, networks=len(states), card=card)
        arrays = {f"{i}/{k}": v for i, s in enumerate(states) for k, v in s.items()}
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True, default=float)), **arrays)
    os.replace(tmp, path)


def _as_arrays(net) -> dict:
    """A torch module's or a state dict's parameters as float32 numpy arrays."""
    state = net.state_dict() if hasattr(net, "state_dict") else net
    return {str(k): (v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32))
            for k, v in state.items()}
