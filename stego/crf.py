"""DenseCRF refinement of docs/protocol.md §7, serially or in a pool of worker processes that cannot hang.

The release ran its CRF in a `multiprocessing.Pool` that could hang its evaluation; here each item has a
timeout, a worker that dies or stalls is killed and its item is recomputed serially in the main process,
and the workers are always shut down (also on errors and Ctrl-C). This module imports no torch, so
worker processes (forkserver or spawn, never fork after torch started threads) start in a fraction of a
second: they import only numpy and pydensecrf.
"""
import logging
import multiprocessing
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

import numpy as np
import pydensecrf.densecrf as dcrf

from stego.constants import IMAGENET_MEAN, IMAGENET_STD
from stego.errors import StegoError

log = logging.getLogger(__name__)

ITERATIONS = 10
UNARY_CLIP = 1e-5
GAUSSIAN_SXY = 1
GAUSSIAN_COMPAT = 3
BILATERAL_SXY = 67
BILATERAL_SRGB = 3
BILATERAL_COMPAT = 4

START_TIMEOUT = 60.0
"""Seconds a new worker may take to import its modules and report ready before it counts as failed."""
JOIN_TIMEOUT = 5.0
"""Seconds a worker gets to exit after being asked (or terminated) before it is killed."""

_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def image_to_bgr_uint8(img):
    """ImageNet-normalised float image [3,H,W] (tensor or array) → H×W×3 uint8 BGR, C-contiguous.

    Follows the release: un-normalise in float32 (× std + mean), `mul(255).byte()` (truncation, so
    0.9999 → 254), channels reversed to BGR. Values are clamped to 0..255 before truncating: torch's
    `byte()` wraps out-of-range floats (256.0 → 0, −1.5 → 255), which only differs for inputs that were not
    [0, 1] images; in range the result is the release's bit for bit.
    """
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
    x = np.asarray(img, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise StegoError(f"image_to_bgr_uint8: expected a [3,H,W] image, got shape {x.shape}")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    scaled = (x * std + mean) * np.float32(255)
    rgb = np.clip(scaled, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[::-1].transpose(1, 2, 0))


def _check_inputs(image, probs):
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise StegoError(f"dense_crf: image must be an H×W×3 uint8 BGR array (see image_to_bgr_uint8), got {desc}")
    if not (isinstance(probs, np.ndarray) and probs.ndim == 3 and np.issubdtype(probs.dtype, np.floating)):
        desc = f"{probs.dtype} {probs.shape}" if isinstance(probs, np.ndarray) else type(probs).__name__
        raise StegoError(f"dense_crf: probs must be a float [K,H,W] array of softmax probabilities, got {desc}")


def _resize_weights(n_out, n_in):
    """Source indices and weights of 1-D bilinear resampling, as torch's align_corners=False computes them."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear(x, height, width):
    """Resize [K,h,w] to [K,height,width] like F.interpolate(mode='bilinear', align_corners=False)."""
    y0, y1, wy = _resize_weights(height, x.shape[1])
    x0, x1, wx = _resize_weights(width, x.shape[2])
    rows = x[:, y0] * (1 - wy)[:, None] + x[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def _resize_probs(probs, height, width):
    """Bring probs to the image size as the release did: resize its log-probabilities, then softmax."""
    logp = resize_bilinear(np.log(np.maximum(probs, np.finfo(np.float32).tiny)).astype(np.float32), height, width)
    e = np.exp(logp - logp.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def dense_crf(image_bgr, probs, iterations=ITERATIONS):
    """Refine softmax probabilities [K,H,W] with DenseCRF on the BGR uint8 image; returns float32 [K,H,W].

    Probs of another size are resized to the image first (bilinear, align_corners=False, on the
    log-probabilities followed by a softmax: the release resized its log-softmax input and softmaxed it).
    """
    _check_inputs(image_bgr, probs)
    height, width = image_bgr.shape[:2]
    if probs.shape[1:] != (height, width):
        probs = _resize_probs(probs, height, width)
    n_labels = probs.shape[0]
    unary = np.ascontiguousarray(-np.log(np.clip(probs, UNARY_CLIP, 1.0)).reshape(n_labels, -1), dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=np.ascontiguousarray(image_bgr),
                             compat=BILATERAL_COMPAT)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def as_labels(marginals: np.ndarray) -> np.ndarray:
    """The label of each pixel of CRF marginals [K,H,W] (the first of equal maxima, as torch's argmax), in the
    smallest integer type that holds K labels: what a worker sends back instead of K floats a pixel."""
    return marginals.argmax(axis=0).astype(np.uint8 if marginals.shape[0] <= 256 else np.int32)


def _worker_main(conn, worker_fn):
    """Worker process loop: report ready, then answer (index, image, probs, iterations, labels) until told to
    stop, with the marginals or (labels) their argmax, each reply with the seconds the item took (the pool's
    occupancy, `CrfPool.busy_s`).

    Ctrl-C is ignored here: the parent handles it and terminates the workers, without a traceback per child.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn.send(("ready", None, None, 0.0))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        index, image, probs, iterations, labels = msg
        start = time.perf_counter()
        try:
            out = worker_fn(image, probs, iterations)
            reply = ("ok", index, as_labels(out) if labels else out)
        except Exception as exc:  # the parent recomputes the item serially, which raises it with a traceback
            reply = ("error", index, f"{type(exc).__name__}: {exc}")
        conn.send((*reply, time.perf_counter() - start))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: object
    deadline: float
    state: str = "starting"
    """'starting' (until it reports ready), 'idle' or 'busy'."""
    item: tuple = ()
    """(batch, index) of the item it is working on."""


@dataclass
class _Batch:
    """One `submit`'s items and what has come back of them."""

    images: list
    probs: list
    results: list
    left: int
    """Items neither answered nor failed yet."""
    failed: list
    labels: bool = False
    """Answer each item with its labels (as_labels) instead of its marginals."""


class CrfPool:
    """Worker processes running `dense_crf`, kept alive across calls; use as a context manager.

    `submit` hands a batch's items to the workers and returns at once, so the caller can compute the next batch
    meanwhile; `result` waits for a batch, feeding idle workers the items of later batches while it waits, so the
    pool does not idle between batches; `map` is both in one call. A worker that dies, raises or exceeds `timeout`
    seconds on an item is killed and replaced, and that item is recomputed serially in this process; a worker that
    cannot start marks the pool broken, after which items run serially. `close` (also on exit of the `with` block)
    asks workers to stop, then terminates and kills stragglers; workers are daemons, so interpreter exit ends them
    too. `_worker_fn` replaces what workers run (module-level, importable: tests inject crashing or sleeping
    versions); the serial fallback always runs `dense_crf`.
    """

    def __init__(self, workers, timeout=120.0, iterations=ITERATIONS, _worker_fn=None):
        if workers < 1:
            raise StegoError(f"CrfPool needs at least 1 worker, got {workers}; use crf_batch(workers=0) for serial")
        self.workers = workers
        self.timeout = timeout
        self.iterations = iterations
        self._worker_fn = _worker_fn or dense_crf
        self._ctx = multiprocessing.get_context(_START_METHOD)
        self._pool = []
        self._pending = deque()
        """(batch, index) of submitted items no worker has taken yet, in submission order."""
        self._broken = False
        self._closed = False
        self._warned = False
        self.busy_s = 0.0
        """Seconds the workers spent on items (wall, inside the worker): ÷ (workers × elapsed) is the pool's
        occupancy, the share of worker time that had an item to work on."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def map(self, images, probs, labels: bool = False):
        """Refined probs (or with `labels`, their argmax) for each (image, probs) pair, in input order."""
        return self.result(self.submit(images, probs, labels))

    def submit(self, images, probs, labels: bool = False):
        """Start refining each (image, probs) pair in the workers and return a handle for `result` at once; with
        `labels` the workers send back each pixel's label only (as_labels: ~1/100 of the marginals' bytes)."""
        if self._closed:
            raise StegoError("CrfPool used after close(); create a new CrfPool")
        if len(images) != len(probs):
            raise StegoError(f"crf: {len(images)} images but {len(probs)} probability maps; pass one per image")
        for image, prob in zip(images, probs):
            _check_inputs(image, prob)
        batch = _Batch(list(images), list(probs), [None] * len(images), len(images), [], labels)
        self._pending.extend((batch, index) for index in range(len(images)))
        try:
            if batch.left and not self._broken:
                self._fill()
            self._feed()
        except BaseException:
            self._terminate_all()
            raise
        return batch

    def result(self, batch):
        """The refined probs (or labels) of a `submit`ted batch, in its input order, once all are done."""
        if self._closed:
            raise StegoError("CrfPool used after close(); create a new CrfPool")
        try:
            while batch.left:
                if not self._pool:  # none left to start or wait for: this batch's items go to the serial fallback
                    mine = [item for item in self._pending if item[0] is batch]
                    self._pending = deque(item for item in self._pending if item[0] is not batch)
                    batch.failed.extend(index for _, index in mine)
                    batch.left -= len(mine)
                    break
                self._feed()
                self._collect()
        except BaseException:
            self._terminate_all()
            raise
        for index in batch.failed:
            out = dense_crf(batch.images[index], batch.probs[index], self.iterations)
            batch.results[index] = as_labels(out) if batch.labels else out
        return batch.results

    def close(self):
        """Stop all workers: ask politely, then terminate, then kill; safe to call twice."""
        self._closed = True
        asked = []
        for worker in self._pool:
            if worker.state != "busy":
                try:
                    worker.conn.send(None)
                    asked.append(worker)
                except OSError:
                    pass
        deadline = time.monotonic() + JOIN_TIMEOUT
        for worker in asked:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self._terminate_all()
        self._pending.clear()

    def _fill(self):
        self._pool = [w for w in self._pool if w.process.is_alive() or self._drop(w)]
        while len(self._pool) < self.workers and not self._broken:
            self._start()

    def _start(self):
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child_conn, self._worker_fn), daemon=True,
                                    name="stego-crf")
        try:
            process.start()
        except Exception as exc:  # out of processes, memory or file handles: carry on serially
            parent_conn.close()
            self._broken = True
            self._warn(f"could not start a CRF worker ({type(exc).__name__}: {exc}); no more will be started")
            return
        finally:
            child_conn.close()
        self._pool.append(_Worker(process, parent_conn, time.monotonic() + START_TIMEOUT))

    def _feed(self):
        """Give every idle worker the next pending item."""
        for worker in [w for w in self._pool if w.state == "idle"]:
            if self._pending:
                self._dispatch(worker, self._pending.popleft())

    def _dispatch(self, worker, item):
        batch, index = item
        worker.state, worker.item = "busy", item
        worker.deadline = time.monotonic() + self.timeout
        try:
            worker.conn.send((index, batch.images[index], batch.probs[index], self.iterations, batch.labels))
        except OSError:
            self._fail(worker, "died before taking its item")

    def _collect(self):
        """Wait for the next reply, death or deadline among the workers and handle it."""
        waiting = [w for w in self._pool if w.state != "idle"]
        if not waiting:
            return
        timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        ready = set(wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting], timeout))
        now = time.monotonic()
        for worker in waiting:
            if worker.conn in ready:
                try:
                    kind, _, payload, seconds = worker.conn.recv()
                except Exception:  # EOF, broken pipe or a reply cut short: the worker is gone
                    self._fail(worker, "died")
                    continue
                if kind in ("ok", "error"):  # "ok", "error" and "ready" all leave the worker idle
                    self.busy_s += seconds
                    batch, index = worker.item
                    batch.left -= 1
                    if kind == "ok":
                        batch.results[index] = payload
                    else:
                        batch.failed.append(index)
                        self._warn(f"CRF worker raised on item {index} ({payload}); recomputing it serially")
                worker.state, worker.item = "idle", ()
            elif worker.process.sentinel in ready:
                self._fail(worker, f"died (exit code {worker.process.exitcode})")
            elif now >= worker.deadline:
                limit = self.timeout if worker.state == "busy" else START_TIMEOUT
                self._fail(worker, f"timed out after {limit:g} s")

    def _fail(self, worker, why):
        """Kill a failed worker; its item goes to the serial fallback; replace it unless it never started."""
        if worker.state == "busy":
            batch, index = worker.item
            batch.failed.append(index)
            batch.left -= 1
            self._warn(f"CRF worker {why} on item {index}; recomputing it serially in the main process")
        else:
            self._warn(f"CRF worker {why} while starting; no more CRF workers will be started")
        self._pool.remove(worker)
        self._drop(worker)
        if worker.state == "starting":
            self._broken = True
        elif not self._broken:
            self._start()

    def _warn(self, message):
        if self._warned:
            log.debug("%s", message)
            return
        self._warned = True
        log.warning("%s (further CRF worker failures of this pool are logged at debug level)", message)

    def _terminate_all(self):
        """End every worker; the items they were working on go back to the front of the queue."""
        for worker in self._pool:
            if worker.state == "busy":
                self._pending.appendleft(worker.item)
            self._drop(worker)
        self._pool = []

    @staticmethod
    def _drop(worker):
        """End one worker process for certain and release its pipe; returns False (for filtering)."""
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(JOIN_TIMEOUT)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        return False


def crf_batch(images, probs, workers=0, timeout=120.0, iterations=ITERATIONS, _worker_fn=None, labels=False):
    """`dense_crf` on each (image, probs) pair (with `labels`: its as_labels), serially for workers=0, else in a
    temporary `CrfPool`."""
    if workers <= 0:
        if len(images) != len(probs):
            raise StegoError(f"crf: {len(images)} images but {len(probs)} probability maps; pass one per image")
        out = [dense_crf(image, prob, iterations) for image, prob in zip(images, probs)]
        return [as_labels(q) for q in out] if labels else out
    with CrfPool(min(workers, max(len(images), 1)), timeout, iterations, _worker_fn) as pool:
        return pool.map(images, probs, labels)
