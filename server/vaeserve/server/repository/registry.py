"""The registry: model name -> versions -> served model, and how versions come and go.

A new or changed version is loaded, checked and warmed up on a thread, off the serving path,
then swapped in by one assignment on the event loop: requests resolved after it get the new
version, those already running keep the old one, which is retired once its requests in flight
are done (or `retire_timeout_s` passes) and then closed. A bundle that fails to load leaves the
version serving before it in place. All changes run on the event loop, one model at a time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vaeserve.server.engine import BundleError, ProviderUnavailable
from vaeserve.server.errors import InvalidArgument, ModelNotFound, NotReady
from vaeserve.server.repository.model_settings import ModelSettings
from vaeserve.server.repository.source import ModelDir, Source, VersionDir
from vaeserve.server.serving.model import Lease, ServedModel

__all__ = ["Attributed", "Entry", "Loader", "ModelRegistry", "ModelState"]

log = logging.getLogger(__name__)

Loader = Callable[[str, str, Path, ModelSettings], ServedModel]  # runs on a thread


class Attributed(Protocol):
    """A request as the boundary records it (its `RequestInfo`): told which model version serves it."""

    model: str
    version: str


class ModelState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    FAILED = "FAILED"


@dataclass
class Entry:
    name: str
    version: str
    path: Path
    state: ModelState
    fingerprint: str
    reason: str = ""
    model: ServedModel | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_flight(self) -> int:
        return self.model.in_flight if self.model else 0


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions in number order, above any other name (a bundle's own version string)."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class ModelRegistry:
    def __init__(
        self,
        source: Source,
        loader: Loader,
        *,
        default_model: str | None = None,
        retire_timeout_s: float = 30.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self.default_model = default_model
        self._loader = loader
        self._retire_timeout_s = retire_timeout_s
        self.on_change = on_change
        self._models: dict[str, dict[str, Entry]] = {}
        self._retiring: list[Entry] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._unloaded: set[tuple[str, str]] = set()  # (name, version or "") unloaded by hand: polls leave them
        self._settings_errors: dict[str, str] = {}  # logged once per model and error

    # --- routing -------------------------------------------------------------------------------

    def resolve(self, name: str, version: str) -> ServedModel:
        """The served model a request names; an empty version is the newest ready one."""
        name = name or self._default_name()
        entries = self._models.get(name)
        if not entries:
            served = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here; models served: {served}")
        if version:
            entry = entries.get(version)
            if entry is None:
                known = ", ".join(sorted(entries, key=version_key, reverse=True))
                raise ModelNotFound(f"model {name}:{version} is not served here; versions of {name}: {known}")
            if entry.state is ModelState.READY and entry.model is not None:
                return entry.model
            raise NotReady(
                f"model {name}:{version} is {entry.state.value}" + (f": {entry.reason}" if entry.reason else "")
            )
        ready = [e for e in entries.values() if e.state is ModelState.READY and e.model is not None]
        if ready:
            model = max(ready, key=lambda e: version_key(e.version)).model
            assert model is not None
            return model
        states = ", ".join(f"{e.version} {e.state.value}" for e in entries.values())
        raise NotReady(f"model {name} has no ready version ({states}); retry shortly")

    def default_name(self) -> str:
        """Where a request without a model name goes now ("" when it would be refused)."""
        if self.default_model:
            return self.default_model
        return next(iter(self._models)) if len(self._models) == 1 else ""

    def _default_name(self) -> str:
        if self.default_model:
            return self.default_model
        if len(self._models) == 1:
            return next(iter(self._models))
        if not self._models:
            raise NotReady("the models are still loading; retry shortly (the health check says SERVING when ready)")
        raise InvalidArgument(
            f"this server serves several models ({', '.join(sorted(self._models))}); name one in ModelSpec.name"
        )

    def lease(self, name: str, version: str, request: Attributed) -> Lease:
        """`async with registry.lease(name, version, request) as model:` the model a request names, held for
        the request (it is not closed while the request runs), and named on `request` for its log and metrics."""
        model = self.resolve(name, version)
        request.model, request.version = model.name, model.version
        return model.lease()

    # --- what there is ---------------------------------------------------------------------------

    def entries(self, name: str = "") -> list[Entry]:
        """Every version known (retiring ones too), by name, newest version first."""
        every = [e for versions in self._models.values() for e in versions.values()] + self._retiring
        chosen = [e for e in every if not name or e.name == name]
        return sorted(chosen, key=lambda e: (e.name, tuple(-x for x in version_key(e.version)[:2]), e.version))

    def ready_names(self) -> set[str]:
        return {
            name
            for name, versions in self._models.items()
            if any(e.state is ModelState.READY for e in versions.values())
        }

    def known_names(self) -> set[str]:
        return set(self._models)

    # --- loading and retiring ---------------------------------------------------------------------

    async def sync(self, names: Iterable[str] | None = None, *, explicit: bool = False) -> None:
        """Brings the served versions in line with the source: new or changed ones loaded, others retired.

        `explicit` (LoadModel): the named models are loaded even if unloaded by hand before, failed
        versions are tried again, and a name the source does not have is NOT_FOUND.
        """
        scan = await asyncio.to_thread(self.source.scan)
        targets = sorted(set(names) if names is not None else set(scan) | set(self._models))
        for name in targets:
            if explicit:
                if name not in scan:
                    raise ModelNotFound(f"there is no model {name!r} in the {self.source.describe()}")
                self._unloaded = {u for u in self._unloaded if u[0] != name}
            elif (name, "") in self._unloaded:
                continue
            async with self._locks[name]:
                await self._sync_model(name, scan.get(name), explicit)

    async def _sync_model(self, name: str, model_dir: ModelDir | None, retry_failed: bool) -> None:
        entries = self._models.setdefault(name, {})
        if model_dir is not None and model_dir.settings_error:
            self._settings_failed(entries, model_dir)
            return
        self._settings_errors.pop(name, None)
        wanted = [v for v in (model_dir.selected if model_dir else ()) if (name, v) not in self._unloaded]
        for version in wanted:
            assert model_dir is not None
            vdir = model_dir.versions[version]
            entry = entries.get(version)
            unchanged = entry is not None and entry.fingerprint == vdir.fingerprint
            if unchanged and not (retry_failed and entry is not None and entry.state is ModelState.FAILED):
                continue
            await self._load(entries, model_dir, vdir)
        # A wanted version that failed keeps the version serving before it in place (newest first).
        missing = sum(1 for v in wanted if entries[v].state is not ModelState.READY)
        for version in sorted(entries, key=version_key, reverse=True):
            if version in wanted:
                continue
            entry = entries[version]
            if missing and entry.state is ModelState.READY:
                missing -= 1
                entry.reason = "kept serving: a version the policy asks for is not ready"
                continue
            del entries[version]
            self._retire(entry)
        if not entries:
            del self._models[name]
        self.on_change()

    def _settings_failed(self, entries: dict[str, Entry], model_dir: ModelDir) -> None:
        """A model.toml that cannot be used changes nothing: what serves keeps serving as configured before."""
        error = model_dir.settings_error or ""
        if self._settings_errors.get(model_dir.name) != error:
            log.error("model %s: %s", model_dir.name, error)
            self._settings_errors[model_dir.name] = error
        if not entries:
            for version in model_dir.selected:
                vdir = model_dir.versions[version]
                entries[version] = Entry(model_dir.name, version, vdir.path, ModelState.FAILED, "", error)
        for entry in entries.values():
            entry.reason = error if entry.state is ModelState.FAILED else f"{error}; serving as configured before"
        self.on_change()

    async def _load(self, entries: dict[str, Entry], model_dir: ModelDir, vdir: VersionDir) -> None:
        name, version = model_dir.name, vdir.version
        old = entries.get(version)
        serving = old if old is not None and old.state is ModelState.READY else None
        if serving is None:
            entries[version] = Entry(name, version, vdir.path, ModelState.LOADING, vdir.fingerprint)
            self.on_change()
        try:
            log.info("loading %s:%s from %s", name, version, vdir.path)
            model = await asyncio.to_thread(self._loader, name, version, vdir.path, model_dir.settings)
        except Exception as exc:  # a bundle can fail in many ways; each is reported, none stops the server
            reason = str(exc) or type(exc).__name__
            expected = isinstance(exc, (BundleError, ProviderUnavailable, ValueError, OSError))
            log.error("model %s:%s failed to load: %s", name, version, reason, exc_info=not expected)
            if serving is not None:
                serving.fingerprint = vdir.fingerprint  # not tried again until it changes again
                serving.reason = f"a changed bundle failed to load; serving the one loaded before: {reason}"
            else:
                entries[version] = Entry(name, version, vdir.path, ModelState.FAILED, vdir.fingerprint, reason)
            return
        entries[version] = Entry(name, version, vdir.path, ModelState.READY, vdir.fingerprint, model=model)
        for other in entries.values():
            other.reason = "" if other.state is ModelState.READY else other.reason
        log.info("model %s:%s READY (%s)", name, version, model.engine.provider)
        if serving is not None:
            self._retire(serving)

    def _retire(self, entry: Entry) -> None:
        """Takes a version out of service; it closes once its requests in flight are done."""
        if entry.model is None:
            entry.drained.set()
            return
        entry.state = ModelState.UNLOADING
        self._retiring.append(entry)
        task = asyncio.get_running_loop().create_task(self._drain(entry), name=f"retire {entry.name}:{entry.version}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, entry: Entry) -> None:
        assert entry.model is not None
        try:
            await asyncio.wait_for(entry.model.wait_idle(), self._retire_timeout_s)
        except TimeoutError:
            log.warning(
                "%s:%s still had %d requests in flight after %.0f s; closing it",
                entry.name,
                entry.version,
                entry.in_flight,
                self._retire_timeout_s,
            )
        await entry.model.close()
        self._retiring.remove(entry)
        entry.drained.set()
        log.info("model %s:%s unloaded", entry.name, entry.version)
        self.on_change()

    async def unload(self, name: str, version: str = "") -> None:
        """Retires a model (or one version) and returns once it has finished its requests in flight."""
        entries = self._models.get(name)
        if not entries or (version and version not in entries):
            raise ModelNotFound(f"model {name}{':' + version if version else ''} is not loaded")
        async with self._locks[name]:
            retired = [entries.pop(v) for v in ([version] if version else list(entries))]
            self._unloaded.add((name, version))
            if not entries:
                del self._models[name]
            for entry in retired:
                self._retire(entry)
            self.on_change()
        await asyncio.gather(*(entry.drained.wait() for entry in retired))

    async def poll(self, interval_s: float) -> None:
        """Syncs with the source every interval, until cancelled; a failed scan is logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:
                log.exception("polling the %s failed", self.source.describe())

    async def close(self) -> None:
        """Retires every version and waits for them (the server has stopped taking requests)."""
        for name in list(self._models):
            for entry in self._models.pop(name).values():
                self._retire(entry)
        await asyncio.gather(*self._tasks, return_exceptions=True)
