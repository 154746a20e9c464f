"""The ranking network's layout, defined once, and its forward pass in numpy (no torch).

The layout is RELION-5's class-ranker model v1.0 (parameter names and shapes of its state
dict): a CNN on the 64x64 image (3x3 convolutions, widths 16/32/64/128, three stride-2
stages -> 128x8x8), a linear map to a 48-d image vector, joined to the 24 features, 48
hidden units and one output. :func:`ranker.runtime.model.build_net` builds the torch
module from :data:`CONVS` and :data:`LINEARS`; :class:`NumpyNet` runs the same arithmetic
with numpy, so that scoring on a CPU needs neither torch's import (1.5-3 s of CPU, 220 MB)
nor its threads.

:class:`NumpyNet` keeps activations channels-last on a zero-padded grid, flattened, with
each position holding its left neighbour, itself and its right neighbour (``3 x C``
values). A 3x3 convolution is then three matrix products of contiguous rows (one per
kernel row: the rows above, at and below, a fixed offset apart), with no im2col copy;
the stride-2 convolutions gather their (4x fewer) positions first. Results agree with
torch's to float32 rounding (tests/test_network.py).
"""

from __future__ import annotations

import numpy as np

IMAGE_PX = 64
FEATURE_DIM = 24
# cnn_layers: (index in the Sequential, in channels, out channels, stride, ReLU after). The
# Sequential has CNN_LENGTH modules: the convolutions at these indices, a ReLU after those
# marked, Dropout in the other places (RELION's indices, so its state dict loads as is).
CONVS = ((0, 1, 16, 1, True), (3, 16, 16, 1, True), (5, 16, 32, 2, False),
         (7, 32, 32, 1, True), (10, 32, 32, 1, True), (12, 32, 64, 2, False),
         (14, 64, 64, 1, True), (17, 64, 64, 1, True), (19, 64, 128, 2, False))
CNN_LENGTH = 21
CNN_OUT = (128, 8, 8)  # channels, height, width after the CNN (flattened in this order)
# Linear layers: (state-dict module name, in, out, ReLU after). The first maps the CNN's output
# to the image vector; the others are the classifier on [image vector, 24 features].
LINEARS = (("feature_extractor.0", CNN_OUT[0] * CNN_OUT[1] * CNN_OUT[2], 48, False),
           ("classifier_images_and_features.1", 48 + FEATURE_DIM, 48, True),
           ("classifier_images_and_features.4", 48, 1, False))
HEAD_LENGTH = 5  # classifier_images_and_features: Dropout, Linear, ReLU, Dropout, Linear


def param_shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter of the network: state-dict name -> shape (torch's conventions:
    conv weight (out, in, 3, 3), linear weight (out, in))."""
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, cin, cout, _stride, _relu in CONVS:
        shapes[f"cnn_layers.{idx}.weight"] = (cout, cin, 3, 3)
        shapes[f"cnn_layers.{idx}.bias"] = (cout,)
    for name, fin, fout, _relu in LINEARS:
        shapes[f"{name}.weight"] = (fout, fin)
        shapes[f"{name}.bias"] = (fout,)
    return shapes


def check_state(state: dict) -> str | None:
    """None if ``state`` (name -> array) has exactly the network's parameters, else what is wrong."""
    shapes = param_shapes()
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        return (f"missing {', '.join(missing[:3])}" if missing else "") + ("; " if missing and extra else "") + \
               (f"unexpected {', '.join(map(str, extra[:3]))}" if extra else "")
    for k, shape in shapes.items():
        if tuple(np.shape(state[k])) != shape:
            return f"{k} has shape {tuple(np.shape(state[k]))}, the network needs {shape}"
    return None


class NumpyNet:
    """One network's forward pass in numpy, from a state dict of float arrays (see
    :func:`param_shapes`). ``embed`` runs the CNN and the image vector (the costly part,
    which needs only the images), ``head`` the classifier; ``__call__`` both."""

    def __init__(self, state: dict):
        f32 = {k: np.ascontiguousarray(state[k], dtype=np.float32) for k in param_shapes()}
        self.convs = []
        for idx, cin, cout, stride, relu in CONVS:
            w = f32[f"cnn_layers.{idx}.weight"].transpose(2, 3, 1, 0)  # ky, kx, in, out
            # stride 1: one (kx, in) x out matrix per kernel row; else all nine taps in one
            w = w.reshape(3, 3 * cin, cout) if stride == 1 and cin > 1 else w.reshape(9 * cin, cout)
            self.convs.append((cin, cout, stride, relu, np.ascontiguousarray(w), f32[f"cnn_layers.{idx}.bias"]))
        c, h, w_ = CNN_OUT
        name, fin, fout, _ = LINEARS[0]  # torch flattens (c, h, w); ours is (h, w, c)
        fe = f32[f"{name}.weight"].reshape(fout, c, h, w_).transpose(2, 3, 1, 0).reshape(fin, fout)
        self.image_vector = (np.ascontiguousarray(fe), f32[f"{name}.bias"])
        self.head_layers = [(np.ascontiguousarray(f32[f"{n}.weight"].T), f32[f"{n}.bias"], relu)
                            for n, _fin, _fout, relu in LINEARS[1:]]

    def __call__(self, images: np.ndarray, features: np.ndarray, batch: int = 16) -> np.ndarray:
        """Logits (K,) for images (K, 64, 64) and features (K, 24)."""
        return self.head(self.embed(images, batch), features)

    def head(self, image_vectors: np.ndarray, features: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.asarray(image_vectors, np.float32), np.asarray(features, np.float32)], axis=1)
        for w, b, relu in self.head_layers:
            x = x @ w + b
            if relu:
                np.maximum(x, 0, out=x)
        return x[:, 0]

    def embed(self, images: np.ndarray, batch: int = 8, work: dict | None = None) -> np.ndarray:
        """The 48-d image vectors (K, 48) of images (K, 64, 64), ``batch`` images at a time
        (about 2.5 MB of work arrays per image in a batch). ``work``: work arrays to use and
        keep (a dict, shared by the networks of an ensemble): new memory is slow to touch."""
        images = np.asarray(images, np.float32)
        k = len(images)
        out = np.empty((k, self.image_vector[0].shape[1]), np.float32)
        work = {} if work is None else work
        for s in range(0, k, batch):
            out[s:s + batch] = self._embed_batch(images[s:s + batch], work)
        return out

    def _embed_batch(self, x: np.ndarray, work: dict) -> np.ndarray:
        b, h, w = x.shape
        grid = None
        last = len(self.convs) - 1
        for i, (cin, cout, stride, relu, wt, bias) in enumerate(self.convs):
            if i == 0:  # the first layer: one channel, all nine taps gathered
                o = _first_layer(x, wt, bias, work)
                h_out, w_out = h, w
            elif stride == 1:
                o = _conv_rows(grid, wt, bias, work)
                h_out, w_out = h, w
            else:
                o = _conv_stride2(grid, wt, bias, work)
                h_out, w_out = h // 2, w // 2
            if relu:
                np.maximum(o, 0, out=o)
            if i == last:
                return o.reshape(b, -1) @ self.image_vector[0] + self.image_vector[1]
            h, w = h_out, w_out
            grid = _Grid(b, h, w, cout, work)
            grid.fill(o)
        raise ValueError("the network has no layers")


class _Grid:
    """Activations (b, h, w, c) on a zero-padded (h+2) x (w+2) grid, flattened, each
    position holding [left neighbour, itself, right neighbour], with ``guard`` zero rows
    before and after so that the row above the first and below the last can be read.

    Only the interior's centres are ever written (padding stays 0), so a grid made for
    more images serves fewer: what lies beyond them reaches only padding positions'
    outputs, which are never used."""

    def __init__(self, b: int, h: int, w: int, c: int, work: dict):
        self.b, self.h, self.w, self.c = b, h, w, c
        self.n = b * (h + 2) * (w + 2)
        self.guard = w + 3
        self.buf = _buffer(work, ("grid", h, w, c), (self.n + 2 * self.guard, 3, c), zero=True)
        body = self.buf[self.guard:self.guard + self.n].reshape(b, h + 2, w + 2, 3, c)
        self.centre = body[:, 1:h + 1, 1:w + 1, 1]

    def fill(self, values: np.ndarray) -> None:
        """Put (b, h, w, c) values (given flat or shaped) in, and their neighbours beside them."""
        self.centre[...] = values.reshape(self.centre.shape)
        g, n, flat = self.guard, self.n, self.buf
        flat[g + 1:g + n + 1, 0] = flat[g:g + n, 1]  # left neighbour of p is p - 1
        flat[g - 1:g + n - 1, 2] = flat[g:g + n, 1]  # right neighbour of p is p + 1

    def rows(self, dy: int) -> np.ndarray:
        """(n, 3c): for every grid position, the three values of the row ``dy`` above/below."""
        start = self.guard + dy * (self.w + 2)
        return self.buf[start:start + self.n].reshape(self.n, 3 * self.c)


def _buffer(work: dict, name, shape: tuple, zero: bool = False) -> np.ndarray:
    """A float32 work array of ``shape``: the start of the one kept as ``name`` in ``work``
    (made, or made larger, when needed; ``zero``: made with zeros)."""
    size = int(np.prod(shape))
    flat = work.get(name)
    if flat is None or flat.size < size:
        flat = work[name] = np.zeros(size, np.float32) if zero else np.empty(size, np.float32)
    return flat[:size].reshape(shape)


def _first_layer(x: np.ndarray, w9: np.ndarray, bias: np.ndarray, work: dict) -> np.ndarray:
    """3x3 convolution, padding 1, of single-channel images (b, h, w) -> (b, h, w, cout)."""
    b, h, w = x.shape
    padded = _buffer(work, "pad0", (b, h + 2, w + 2))
    padded[:, 0], padded[:, -1], padded[:, :, 0], padded[:, :, -1] = 0, 0, 0, 0
    padded[:, 1:-1, 1:-1] = x
    taps = _buffer(work, "taps0", (b, h, w, 9))
    for ky in range(3):
        for kx in range(3):
            taps[..., 3 * ky + kx] = padded[:, ky:ky + h, kx:kx + w]
    out = _buffer(work, "out0", (b * h * w, w9.shape[1]))
    np.matmul(taps.reshape(-1, 9), w9, out=out)
    out += bias
    return out.reshape(b, h, w, -1)


def _conv_rows(grid: _Grid, w3: np.ndarray, bias: np.ndarray, work: dict) -> np.ndarray:
    """3x3 convolution, stride 1, padding 1: three products of contiguous rows; the result
    is computed on the whole padded grid and the interior returned (b, h, w, cout)."""
    cout = w3.shape[2]
    out = _buffer(work, "out", (grid.n, cout))
    tmp = _buffer(work, "tmp", (grid.n, cout))
    np.matmul(grid.rows(-1), w3[0], out=out)
    np.matmul(grid.rows(0), w3[1], out=tmp)
    out += tmp
    np.matmul(grid.rows(1), w3[2], out=tmp)
    out += tmp
    out += bias
    return out.reshape(grid.b, grid.h + 2, grid.w + 2, cout)[:, 1:-1, 1:-1]


def _conv_stride2(grid: _Grid, w9: np.ndarray, bias: np.ndarray, work: dict) -> np.ndarray:
    """3x3 convolution, stride 2, padding 1 (even h, w) -> (b, h/2, w/2, cout)."""
    b, h, w, c = grid.b, grid.h, grid.w, grid.c
    body = grid.buf[grid.guard:grid.guard + grid.n].reshape(b, h + 2, w + 2, 3 * c)
    taps = _buffer(work, "taps2", (b, h // 2, w // 2, 3, 3 * c))
    for ky in range(3):
        taps[:, :, :, ky] = body[:, ky:ky + h:2, 1:w + 1:2]
    out = _buffer(work, "out2", (b * (h // 2) * (w // 2), w9.shape[1]))
    np.matmul(taps.reshape(len(out), -1), w9, out=out)
    out += bias
    return out.reshape(b, h // 2, w // 2, -1)
