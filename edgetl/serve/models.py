"""The model manager: which bundle version serves each model name, and safe hot swaps.

A new bundle version is verified before it may serve: artifact hashes (`open_bundle`), a real load
through `edgetl.runtime.load`, and the golden smoke test (the bundle's recorded inputs through the
loaded predictor, compared with the FP32 reference outputs within the manifest's tolerance for the
precision in use). Only then does it replace the serving version, in one step on the event loop:
requests that already hold the old version finish on it, and the old predictor is closed when the
last of them releases it. A bundle that fails verification is logged, counted in the metrics, listed
in the model's metadata, and the old version keeps serving.

Repository layout (``--models DIR``), Triton-style:
    DIR/<name>/manifest.json              one unversioned bundle (version "1"; edits reload it)
    DIR/<name>/<version>/manifest.json    numeric versions; the highest verified one serves
Names and versions starting with ``.`` are ignored, so ``cp -r b DIR/m/.tmp && mv DIR/m/.tmp DIR/m/3``
drops a version in atomically. A version is tried once its files stopped changing between two polls.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle import Bundle, open_bundle
from edgetl.bundle.check import compare_outputs, load_golden, tolerance_for
from edgetl.bundle.manifest import MANIFEST_NAME
from edgetl.errors import BadInputError, BundleError, EdgetlError
from edgetl.serve.config import ServeConfig
from edgetl.serve.protocol import datatype_of

log = logging.getLogger("edgetl.serve")

_MAX_FILES = 10_000  # fingerprint walk bound: a "bundle" with more files is refused


class ModelNotFound(BadInputError):
    """No such model (or version) is serving (HTTP 404)."""


class VerificationError(BundleError):
    """A bundle version failed the checks that guard a swap."""


@dataclass(frozen=True)
class Candidate:
    """A bundle directory seen in the repository."""

    name: str
    version: str
    path: Path
    fingerprint: tuple


@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 for the batch (or any dynamic) dimension

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    """One verified bundle version with its predictor, shared by the requests that hold it."""

    name: str
    version: str
    path: Path
    fingerprint: tuple
    predictor: Any
    bundle: Bundle
    describe: dict[str, Any]
    input: TensorSpec
    outputs: list[TensorSpec]
    golden: dict[str, Any]
    loaded_at: str = field(default_factory=lambda: _now())
    refcount: int = 0
    retired: bool = False
    closed: bool = False
    batchers: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.bundle.task

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def batcher(self, kind: str, factory: Callable[[], Any]) -> Any:
        if kind not in self.batchers:
            self.batchers[kind] = factory()
        return self.batchers[kind]

    async def aclose(self) -> None:
        """Stop this version's batchers and free its predictor (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for batcher in self.batchers.values():
            await batcher.aclose()
        await asyncio.get_running_loop().run_in_executor(None, _close_quietly, self.predictor)
        log.info("model %s version %s closed", self.name, self.version)

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "backend": self.describe,
            "golden": self.golden,
        }


@dataclass
class ModelRecord:
    """Everything the manager knows about one model name."""

    name: str
    serving: LoadedModel | None = None
    state: str = "LOADING"
    reason: str = ""
    failures: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10))
    failed: dict[str, tuple] = field(default_factory=dict)  # version -> fingerprint that failed
    seen: dict[str, tuple] = field(default_factory=dict)  # version -> fingerprint at the last poll
    unloaded: bool = False


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _close_quietly(predictor: Any) -> None:
    try:
        predictor.close()
    except Exception as exc:  # a failing close must not take the daemon down
        log.warning("closing a predictor failed: %s", exc)


def default_loader(bundle: Bundle, config: ServeConfig) -> Any:
    """Load a predictor with the runtime (hashes were checked just before, so no second pass)."""
    from edgetl import runtime

    load = getattr(runtime, "load", None)
    if load is None:
        raise EdgetlError("this edgetl build has no edgetl.runtime.load", hint="reinstall edgetl")
    return load(
        bundle, backend=config.backend, precision=config.precision, device=config.device, verify=False,
        max_pixels=config.max_pixels,
    )


# -- repository scanning --------------------------------------------------------------------------

def fingerprint(path: Path) -> tuple:
    """(relative path, size, mtime) of every file below ``path``: changes whenever a file does."""
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = Path(root) / name
            try:
                st = full.stat()
            except OSError:
                continue
            entries.append((full.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
            if len(entries) > _MAX_FILES:
                return (("<too many files>", len(entries), 0),)
    return tuple(entries)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def scan_repository(models_dir: Path) -> dict[str, list[Candidate]]:
    """Model name -> its bundle versions, highest first."""
    found: dict[str, list[Candidate]] = {}
    try:
        entries = sorted(models_dir.iterdir())
    except OSError as exc:
        log.error("cannot list the model directory %s: %s", models_dir, exc)
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if (entry / MANIFEST_NAME).is_file():
            found[entry.name] = [Candidate(entry.name, "1", entry, fingerprint(entry))]
            continue
        versions = [
            Candidate(entry.name, sub.name, sub, fingerprint(sub))
            for sub in entry.iterdir()
            if sub.is_dir() and sub.name.isdigit() and (sub / MANIFEST_NAME).is_file()
        ]
        if versions:
            found[entry.name] = sorted(versions, key=lambda c: _version_key(c.version), reverse=True)
    return found


def scan_single(bundle_dir: Path) -> dict[str, list[Candidate]]:
    """A single bundle given on the command line: its manifest name (or directory name), version "1"."""
    name = bundle_dir.resolve().name
    try:
        import json

        name = json.loads((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8")).get("name") or name
    except (OSError, ValueError, AttributeError):
        pass  # open_bundle reports the real problem when it is tried
    return {str(name): [Candidate(str(name), "1", bundle_dir, fingerprint(bundle_dir))]}


# -- verification ----------------------------------------------------------------------------------

def verify_and_load(
    candidate: Candidate, config: ServeConfig, loader: Callable[[Bundle, ServeConfig], Any]
) -> LoadedModel:
    """Hashes, load, golden smoke test; returns the ready model or raises `VerificationError`."""
    try:
        bundle = open_bundle(candidate.path, verify=True)
    except EdgetlError as exc:
        raise VerificationError(f"hash/manifest check failed: {exc.message}") from exc
    try:
        predictor = loader(bundle, config)
    except Exception as exc:
        raise VerificationError(f"load failed: {exc}") from exc
    try:
        describe = dict(predictor.describe())
        input_spec = _input_spec(predictor, bundle)
        golden, outputs = _golden_check(predictor, bundle, describe, config.require_golden)
    except Exception as exc:
        _close_quietly(predictor)
        if isinstance(exc, VerificationError):
            raise
        raise VerificationError(f"smoke test failed: {exc}") from exc
    return LoadedModel(
        name=candidate.name,
        version=candidate.version,
        path=candidate.path,
        fingerprint=candidate.fingerprint,
        predictor=predictor,
        bundle=bundle,
        describe=describe,
        input=input_spec,
        outputs=outputs,
        golden=golden,
    )


def _input_spec(predictor: Any, bundle: Bundle) -> TensorSpec:
    # Any batch size is accepted: `Predictor.predict_batch` splits batches over the model's limit.
    h, w = (int(v) for v in bundle.manifest["input"]["size"])
    name = getattr(predictor, "input_name", None) or bundle.input_name
    return TensorSpec(name, "FP32", [-1, 3, h, w])


def _golden_check(
    predictor: Any, bundle: Bundle, describe: dict[str, Any], require: bool
) -> tuple[dict[str, Any], list[TensorSpec]]:
    """Run the bundle's golden inputs through the loaded predictor (the same check as `edgetl bundle check`)."""
    if not bundle.manifest.get("golden"):
        if require:
            raise VerificationError("the bundle has no golden samples and --require-golden is set")
        h, w = bundle.manifest["input"]["size"]
        outputs = predictor.predict_batch(np.zeros((1, 3, h, w), np.float32))
        _check_finite(outputs)
        return {"checked": False, "reason": "no golden samples in the bundle (warm-up only)"}, _output_specs(outputs)
    x, reference = load_golden(bundle)
    outputs = predictor.predict_batch(x)
    _check_finite(outputs)
    precision = str(describe.get("precision", "fp32"))
    tolerance = tolerance_for(bundle, precision)
    report = compare_outputs(outputs, reference, tolerance, classify=bundle.task == "classify")
    report.update(checked=True, precision=precision, tolerance=tolerance, samples=int(len(x)))
    if not report["passed"]:
        raise VerificationError(f"golden smoke test failed ({precision}): " + "; ".join(report["failures"]))
    return report, _output_specs(outputs)


def _check_finite(outputs: dict[str, np.ndarray]) -> None:
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise VerificationError(f"output {name!r} holds NaN or Inf")


def _output_specs(outputs: dict[str, np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(n, datatype_of(v), [-1, *v.shape[1:]]) for n, v in outputs.items()]


# -- the manager -----------------------------------------------------------------------------------

class ModelManager:
    """Owns the serving versions; every state change happens on the event loop thread.

    Args:
        config: the daemon settings (``bundle`` / ``models_dir`` say where models come from).
        metrics: a `ServeMetrics` (or None).
        loader: ``(bundle, config) -> predictor``; `default_loader` uses `edgetl.runtime.load`.
    """

    def __init__(
        self,
        config: ServeConfig,
        metrics: Any = None,
        loader: Callable[[Bundle, ServeConfig], Any] = default_loader,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.loader = loader
        self.records: dict[str, ModelRecord] = {}
        self._poll_lock: asyncio.Lock | None = None
        self._closing: set[asyncio.Task] = set()

    # -- discovery and swaps ----------------------------------------------------------------------
    def _scan(self) -> dict[str, list[Candidate]]:
        found: dict[str, list[Candidate]] = {}
        if self.config.models_dir is not None:
            found.update(scan_repository(self.config.models_dir))
        if self.config.bundle is not None:
            found.update(scan_single(self.config.bundle))
        return found

    async def poll(self, *, force: bool = False, only: str | None = None) -> None:
        """Scan once and load, swap or unload what changed.

        Args:
            force: try new versions at once instead of waiting for their files to settle.
            only: limit the work to this model name (explicit load).
        """
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        async with self._poll_lock:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(None, self._scan)
            for name in sorted(set(self.records) | set(found)):
                if only is not None and name != only:
                    continue
                record = self.records.setdefault(name, ModelRecord(name))
                candidates = found.get(name, [])
                if not candidates:
                    if record.serving is not None:
                        log.warning("model %s: its bundle directory is gone; unloading", name)
                        await self._retire(record, "bundle directory removed")
                    record.state, record.reason = "UNAVAILABLE", "no bundle in the repository"
                    continue
                if record.unloaded and not (force and only == name):
                    record.seen = {c.version: c.fingerprint for c in candidates}
                    continue
                record.unloaded = False
                await self._update(record, candidates, force)
                record.seen = {c.version: c.fingerprint for c in candidates}

    async def _update(self, record: ModelRecord, candidates: list[Candidate], force: bool) -> None:
        for candidate in candidates:  # highest version first
            serving = record.serving
            if serving is not None and (serving.version, serving.fingerprint) == (
                candidate.version, candidate.fingerprint
            ):
                return  # the best candidate is what already serves
            if record.failed.get(candidate.version) == candidate.fingerprint:
                continue  # rejected before and unchanged since
            if not force and record.seen.get(candidate.version) != candidate.fingerprint:
                return  # still being written; try again next poll
            if await self._try(record, candidate):
                return

    async def _try(self, record: ModelRecord, candidate: Candidate) -> bool:
        log.info("model %s: verifying version %s at %s", candidate.name, candidate.version, candidate.path)
        if record.serving is None:
            record.state = "LOADING"
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            loaded = await loop.run_in_executor(None, verify_and_load, candidate, self.config, self.loader)
        except Exception as exc:  # every failure is reported, none takes the daemon down
            reason = str(exc.message if isinstance(exc, EdgetlError) else exc)
            record.failed[candidate.version] = candidate.fingerprint
            record.failures.append(
                {"version": candidate.version, "path": str(candidate.path), "reason": reason, "at": _now()}
            )
            log.error(
                "model %s: version %s REJECTED (%s); %s", candidate.name, candidate.version, reason,
                f"version {record.serving.version} keeps serving" if record.serving else "nothing serves this model",
            )
            if self.metrics is not None:
                self.metrics.loads.labels(candidate.name, "failed").inc()
                self.metrics.last_failure.labels(candidate.name).set(time.time())
            if record.serving is None:
                record.state, record.reason = "UNAVAILABLE", reason
            return False
        record.failed.pop(candidate.version, None)
        old = record.serving
        record.serving = loaded  # the swap: new requests get the new version from here on
        record.state, record.reason = "READY", ""
        log.info(
            "model %s: version %s serving (%s, %s; verified in %.2f s)%s",
            loaded.name, loaded.version, loaded.describe.get("backend"), loaded.describe.get("precision"),
            time.perf_counter() - start, f"; replaced version {old.version}" if old else "",
        )
        if self.metrics is not None:
            self.metrics.loads.labels(loaded.name, "ok").inc()
            self.metrics.set_serving(loaded.name, loaded.version, loaded.describe)
            if old is not None:
                self.metrics.swaps.labels(loaded.name).inc()
        if old is not None:
            self._retire_model(old)
        return True

    def _retire_model(self, model: LoadedModel) -> None:
        model.retired = True
        if model.refcount == 0:
            self._spawn_close(model)

    def _spawn_close(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _retire(self, record: ModelRecord, reason: str) -> None:
        model, record.serving = record.serving, None
        record.state, record.reason = "UNAVAILABLE", reason
        if model is not None:
            self._retire_model(model)
            if self.metrics is not None:
                self.metrics.unloads.labels(record.name).inc()
                self.metrics.set_unloaded(record.name)

    async def watch(self, interval: float) -> None:
        """Poll forever (cancel the task to stop); errors are logged and the loop goes on."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model directory poll failed")

    # -- explicit repository control ----------------------------------------------------------------
    async def load(self, name: str) -> ModelRecord:
        """Load (or reload) ``name`` now; raises `ModelNotFound` or `VerificationError`."""
        record = self.records.get(name)
        if record is not None:
            record.failed.clear()  # an explicit load retries rejected versions
        await self.poll(force=True, only=name)
        record = self.records.get(name)
        if record is None or (record.serving is None and record.state == "UNAVAILABLE" and not record.failures):
            raise ModelNotFound(f"no bundle named {name!r} in the model repository")
        if record.serving is None:
            raise VerificationError(f"model {name!r} failed to load: {record.reason}")
        return record

    async def unload(self, name: str) -> None:
        record = self.records.get(name)
        if record is None or record.serving is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        record.unloaded = True
        await self._retire(record, "unloaded by request")
        log.info("model %s unloaded by request", name)

    # -- request path --------------------------------------------------------------------------------
    @contextmanager
    def acquire(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """Hold the serving version of ``name`` for one request (it is not closed while held)."""
        record = self.records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model {name!r}; serving: {', '.join(self.serving_names()) or 'none'}")
        model = record.serving
        if model is None:
            raise ModelNotFound(f"model {name!r} is not available: {record.reason or record.state.lower()}")
        if version not in (None, "", model.version):
            raise ModelNotFound(f"model {name!r} version {version} is not serving (serving: {model.version})")
        model.refcount += 1
        try:
            yield model
        finally:
            model.refcount -= 1
            if model.retired and model.refcount == 0:
                self._spawn_close(model)

    def serving_names(self) -> list[str]:
        return sorted(n for n, r in self.records.items() if r.serving is not None)

    def ready(self) -> bool:
        return bool(self.serving_names())

    def get(self, name: str) -> ModelRecord:
        record = self.records.get(name)
        if record is None:
            raise ModelNotFound(f"unknown model {name!r}; serving: {', '.join(self.serving_names()) or 'none'}")
        return record

    def index(self) -> list[dict[str, Any]]:
        """The repository index of the protocol's model-repository extension."""
        rows = []
        for name, record in sorted(self.records.items()):
            row = {"name": name, "state": "READY" if record.serving else "UNAVAILABLE"}
            if record.serving:
                row["version"] = record.serving.version
            if record.reason:
                row["reason"] = record.reason
            rows.append(row)
        return rows

    async def aclose(self) -> None:
        """Retire every model and wait until their predictors are closed."""
        for record in self.records.values():
            if record.serving is not None:
                self._retire_model(record.serving)
                record.serving = None
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
