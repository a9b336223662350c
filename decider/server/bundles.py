"""The live bundles of a server: activation, hot reload, rollback, shadow, and the Control RPCs.

`LiveBundles` is the service's `BundleHolder`: `.active` (and `.shadow`) are swapped as single
references on the event loop, and the service reads each once per decision, so every decision
comes entirely from one revision even while bundles switch under load.

Where the active revision comes from:
- the server's own source (`--bundle FILE|FOLDER`), polled for changes (~1 s, stat fingerprints:
  no dependency, works on every file system). A changed source that loads, type-checks and
  verifies is stored and activated; one that does not is logged and shown in Status, and the last
  good bundle keeps serving;
- the store's pointer (`decider bundle activate | rollback | shadow` on any replica): every replica
  polls it and switches to the revision it names, loading it from the stored bundle file, verified
  with this replica's own signature settings. A revision that fails here is refused here too.

At start, the source's revision is activated when it is new to the store (a deploy); when the store
already knows it, the store's pointer wins, so restarting a replica does not undo a rollback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from decider.bundle.archive import (
    BundleVerifyError,
    load_public_key,
)
from decider.bundle.compile import Bundle, open_bundle, open_bundle_bytes
from decider.engine.decision import Decision
from decider.errors import DeciderError, PolicyLoadError
from decider.policy.loader import source_files
from decider.record.record import BundleRef, DecisionRecord
from decider.server.service import BundleHolder
from decider.store.bundles import ACTIVE, SHADOW, AmbiguousRevision, BundleStore
from decider.v1 import decider_pb2 as pb

__all__ = ["Loaded", "LiveBundles", "BundleSettings", "control_handlers", "CONTROL_SERVICE_NAME"]

log = logging.getLogger("decider.server.bundles")
CONTROL_SERVICE_NAME = "decider.v1.Control"
_CACHE_MAX = 8


@dataclass(frozen=True, slots=True)
class BundleSettings:
    source: str
    require_signature: bool = False
    pubkey: str | None = None
    shadow: str | None = None          # a bundle file/folder, or a stored revision (prefix)
    poll_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Loaded:
    """A compiled bundle and where it came from."""

    bundle: Bundle
    source: str
    signed: bool
    archive: bytes                     # the .bundle file bytes, as stored
    loaded_at: datetime


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _load_errors(e: BaseException) -> str:
    if isinstance(e, PolicyLoadError):
        return "; ".join(str(x) for x in e.errors)
    if isinstance(e, (DeciderError, OSError)):
        return str(e)
    return f"{type(e).__name__}: {e}"   # unexpected: the type says more than a bare message


class LiveBundles(BundleHolder):
    def __init__(self, settings: BundleSettings, store: BundleStore) -> None:
        self.settings = settings
        self.store = store
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.pubkey = load_public_key(settings.pubkey) if settings.pubkey else None
        if settings.require_signature and self.pubkey is None:
            raise DeciderError("--require-signature needs --pubkey FILE")
        self.started_at = _now()
        self.shadow: Bundle | None = None
        self.active_info: Loaded | None = None
        self.shadow_info: Loaded | None = None
        self.activated_at: datetime | None = None
        self.shadow_activated_at: datetime | None = None
        self.last_reload_error = ""
        self.last_reload_at: datetime | None = None
        self.counts: dict[str, int] = {}
        self._cache: dict[str, Loaded] = {}
        self._failed: dict[str, str] = {}   # revision → why it was refused (logged once)
        self._fingerprint: object = None
        self._source_revision = ""
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # Told of every activation (True) and every refused bundle (False): server/metrics.py.
        self.on_reload: Callable[[bool], None] | None = None

    # ---- loading ----

    def load_path(self, path: str) -> Loaded:
        """Load a bundle file or folder, verified per this server's signature settings."""
        o = open_bundle(path, pubkey=self.pubkey, require_signature=self.settings.require_signature,
                        with_archive=True)
        return Loaded(o.bundle, str(Path(path)), o.signed, o.archive, _now())

    def load_revision(self, revision: str) -> Loaded:
        """A stored revision, from cache or from its stored bundle file (verified again here)."""
        hit = self._cache.get(revision)
        if hit is not None:
            return hit
        found = self.store.archive(revision)
        if found is None:
            raise DeciderError(f"revision {revision[:12]} is not in the store")
        meta, data = found
        display = f"{meta.source or 'store'}@{revision[:12]}"
        o = open_bundle_bytes(data, display, pubkey=self.pubkey, require_signature=self.settings.require_signature)
        bundle = o.bundle
        if bundle.revision != revision:
            raise BundleVerifyError(display, [f"sources hash to {bundle.revision[:12]}, not {revision[:12]}"])
        loaded = Loaded(bundle, meta.source, o.signed, data, _now())
        self._remember(loaded)
        return loaded

    def _remember(self, loaded: Loaded) -> None:
        if len(self._cache) >= _CACHE_MAX:
            keep = {b.bundle.revision for b in (self.active_info, self.shadow_info) if b is not None}
            for rev in [r for r in self._cache if r not in keep][: len(self._cache) - _CACHE_MAX + 1]:
                del self._cache[rev]
        self._cache[loaded.bundle.revision] = loaded

    def _store(self, loaded: Loaded) -> None:
        b = loaded.bundle
        self.store.put(b.revision, b.name, b.version, loaded.source, loaded.signed, loaded.archive)
        self._remember(loaded)

    # ---- start ----

    def open(self) -> None:
        """Load the source (refusing to start on any error), then settle against the store."""
        s = self.settings
        self._fingerprint = _fingerprint(s.source)
        loaded = self.load_path(s.source)          # raises: a bad bundle never starts a server
        self._source_revision = loaded.bundle.revision
        known = self.store.has(loaded.bundle.revision)
        self._store(loaded)
        pointers = self.store.pointers()
        current = pointers.get(ACTIVE)
        if not known or current is None or current.revision is None:
            act = self.store.point(ACTIVE, loaded.bundle.revision, "load", self.instance)
            self._set_active(loaded, act.activated_at)
        elif current.revision == loaded.bundle.revision:
            self._set_active(loaded, current.activated_at)
        else:
            try:
                self._set_active(self.load_revision(current.revision), current.activated_at)
            except (DeciderError, OSError) as e:
                # The cluster's revision does not load here: serve our own verified source.
                self._refused(current.revision, e)
                self._set_active(loaded, _now())
        if s.shadow:
            shadow = self._shadow_from(s.shadow)
            act = self.store.point(SHADOW, shadow.bundle.revision, "shadow", self.instance)
            self._set_shadow(shadow, act.activated_at)
        else:
            sp = pointers.get(SHADOW)
            if sp is not None and sp.revision:
                try:
                    self._set_shadow(self.load_revision(sp.revision), sp.activated_at)
                except (DeciderError, OSError) as e:
                    self._refused(sp.revision, e)

    def _shadow_from(self, ref: str) -> Loaded:
        if Path(ref).exists():
            loaded = self.load_path(ref)
            self._store(loaded)
            return loaded
        revision = self.store.resolve(ref)
        if revision is None:
            raise DeciderError(f"--shadow-bundle: {ref!r} is neither a bundle file/folder nor a stored revision")
        return self.load_revision(revision)

    # ---- swapping (event loop only) ----

    def _set_active(self, loaded: Loaded, at: datetime) -> None:
        self.active_info = loaded
        self.activated_at = at
        self.active = loaded.bundle             # the one reference the service reads per decision
        if self.on_reload is not None:
            self.on_reload(True)
        log.info("bundle active", extra={"bundle": loaded.bundle.name, "version": loaded.bundle.version,
                                         "revision": loaded.bundle.revision, "source": loaded.source})

    def _set_shadow(self, loaded: Loaded | None, at: datetime | None) -> None:
        self.shadow_info = loaded
        self.shadow_activated_at = at
        self.shadow = loaded.bundle if loaded else None
        log.info("shadow bundle", extra={"revision": loaded.bundle.revision if loaded else None})

    def _refused(self, what: str, e: BaseException) -> None:
        err = _load_errors(e)
        # Errors already name their file (x.bundle: …, x.bundle!/p.yaml:3:4: …); a revision does not.
        msg = f"revision {what[:12]}: {err}" if len(what) == 64 and not err.startswith(what[:12]) else err
        self.last_reload_error = msg
        self.last_reload_at = _now()
        if self.on_reload is not None:
            self.on_reload(False)
        if self._failed.get(what) != msg:
            self._failed[what] = msg
            log.error("bundle refused; the last good bundle keeps serving",
                      extra={"error": msg, "revision": self.active.revision if self.active_info else None})

    # ---- watching ----

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="decider-bundle-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll()
            except Exception as e:  # noqa: BLE001 - a poll that fails (db busy…) must not stop watching
                log.warning("bundle poll failed", extra={"error": str(e)})

    async def poll(self) -> None:
        """One round: reload the source if it changed, then follow the store's pointers."""
        async with self._lock:
            await self._poll_source()
            await self._follow_pointers()

    async def _poll_source(self) -> None:
        fp = await asyncio.to_thread(_fingerprint, self.settings.source)
        if fp == self._fingerprint:
            return
        self._fingerprint = fp
        try:
            loaded = await asyncio.to_thread(self.load_path, self.settings.source)
        except Exception as e:  # noqa: BLE001 - whatever refused it, the reload failed: named, never silent
            # (the fingerprint is already taken: a failure left to the poll loop would never be retried
            # nor shown in Status.last_reload_error; issue 24 item 5)
            self._refused(self.settings.source, e)
            return
        try:
            if loaded.bundle.revision != self._source_revision:
                await asyncio.to_thread(self._store, loaded)
                act = await asyncio.to_thread(self.store.point, ACTIVE, loaded.bundle.revision, "load", self.instance)
                self._set_active(loaded, act.activated_at)
                self._source_revision = loaded.bundle.revision
        except BaseException:
            self._fingerprint = None   # the reload did not finish (the store was busy…): the next poll tries again
            raise
        # Only now: a Status with no reload error means the reloaded revision is the one serving (the
        # error was cleared before the activation's two awaits, and a reader saw the old revision).
        self.last_reload_at = _now()
        self.last_reload_error = ""

    async def _follow_pointers(self) -> None:
        pointers = await asyncio.to_thread(self.store.pointers)
        a = pointers.get(ACTIVE)
        if a is not None and a.revision and a.revision != self.active.revision and a.revision not in self._failed:
            try:
                self._set_active(await asyncio.to_thread(self.load_revision, a.revision), a.activated_at)
                self.last_reload_error = ""
            except (DeciderError, OSError) as e:
                self._refused(a.revision, e)
        s = pointers.get(SHADOW)
        want = s.revision if s is not None else None
        have = self.shadow.revision if self.shadow is not None else None
        if want != have and (want is None or want not in self._failed):
            if want is None:
                self._set_shadow(None, s.activated_at if s else None)
                return
            try:
                self._set_shadow(await asyncio.to_thread(self.load_revision, want), s.activated_at if s else None)
            except (DeciderError, OSError) as e:
                self._refused(want, e)

    # ---- Control operations (the RPC handlers call these) ----

    async def activate(self, prefix: str, action: str = "activate") -> Loaded:
        async with self._lock:
            loaded = await self._resolve_and_load(prefix)
            act = await asyncio.to_thread(self.store.point, ACTIVE, loaded.bundle.revision, action, self.instance)
            self._set_active(loaded, act.activated_at)
            self.last_reload_error = ""
            return loaded

    async def rollback(self) -> Loaded:
        target = await asyncio.to_thread(self.store.rollback_target)
        if target is None:
            raise LookupError("nothing to roll back to: no earlier active revision in the store")
        return await self.activate(target, "rollback")

    async def set_shadow(self, prefix: str) -> None:
        async with self._lock:
            if not prefix:
                act = await asyncio.to_thread(self.store.point, SHADOW, None, "shadow", self.instance)
                self._set_shadow(None, act.activated_at)
                return
            loaded = await self._resolve_and_load(prefix)
            act = await asyncio.to_thread(self.store.point, SHADOW, loaded.bundle.revision, "shadow", self.instance)
            self._set_shadow(loaded, act.activated_at)

    async def _resolve_and_load(self, prefix: str) -> Loaded:
        if not prefix:
            raise ValueError("revision: is required")
        revision = await asyncio.to_thread(self.store.resolve, prefix)
        if revision is None:
            raise LookupError(f"revision: no stored bundle {prefix!r}")
        # Verified and compiled before the pointer moves: a bad revision is never activated.
        loaded = await asyncio.to_thread(self.load_revision, revision)
        self._failed.pop(revision, None)
        return loaded

    # ---- per decision (hot path) ----

    def shadow_into(self, record: DecisionRecord, shadow: Bundle, decision: Decision) -> None:
        """The shadow bundle's decision (made by the service on the shadow's own view of the same
        state, approvals included: server/service.py `_shadow`) into the record, never into the
        response; its effects are never applied."""
        record.shadow_outcome = decision.outcome_name
        record.shadow_rules = decision.matched_rules
        record.shadow_bundle = _shadow_ref(shadow.revision)

    def count(self, outcome: str) -> None:
        """A decision was recorded and answered (Status: decisions by outcome since start)."""
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    # ---- reporting ----

    def info(self, loaded: Loaded | None, at: datetime | None, *, active: bool = False,
             shadow: bool = False) -> pb.BundleInfo:
        if loaded is None:
            return pb.BundleInfo()
        b = loaded.bundle
        out = pb.BundleInfo(name=b.name, version=b.version, revision=b.revision, source=loaded.source,
                            signed=loaded.signed, active=active, shadow=shadow)
        out.loaded_at.FromDatetime(loaded.loaded_at)
        if at is not None:
            out.activated_at.FromDatetime(at)
        return out

    # Set by the server to count the kill switches in force (they live with the stateful controls).
    active_kill_switches: Callable[[], int] = staticmethod(lambda: 0)
    # Set by the server: the budget counters of the active bundle (read from the store, off the loop).
    budget_status: Callable[[], list[pb.BudgetStatus]] = staticmethod(lambda: [])

    def status(self) -> pb.StatusResponse:
        out = pb.StatusResponse(
            active=self.info(self.active_info, self.activated_at, active=True),
            last_reload_error=self.last_reload_error,
            decisions_by_outcome=dict(self.counts),
            instance=self.instance,
            active_kill_switches=self.active_kill_switches(),
        )
        if self.shadow_info is not None:
            out.shadow.CopyFrom(self.info(self.shadow_info, self.shadow_activated_at, shadow=True))
        out.started_at.FromDatetime(self.started_at)
        if self.last_reload_at is not None:
            out.last_reload_at.FromDatetime(self.last_reload_at)
        return out

    def list_bundles(self) -> pb.ListBundlesResponse:
        activated: dict[str, datetime] = {}
        for act in reversed(self.store.history(ACTIVE, limit=1000)):
            if act.revision:
                activated[act.revision] = act.activated_at
        out = pb.ListBundlesResponse()
        active_rev = self.active.revision
        shadow_rev = self.shadow.revision if self.shadow is not None else ""
        for sb in self.store.list():
            info = out.bundles.add(name=sb.name, version=sb.version, revision=sb.revision, source=sb.source,
                                   signed=sb.signed, active=sb.revision == active_rev,
                                   shadow=sb.revision == shadow_rev)
            info.loaded_at.FromDatetime(sb.loaded_at)
            if sb.revision in activated:
                info.activated_at.FromDatetime(activated[sb.revision])
        return out


@functools.lru_cache(maxsize=16)
def _shadow_ref(revision: str) -> BundleRef:
    return BundleRef(revision=revision)


def _fingerprint(path: str) -> object:
    """What changes when a bundle source changes: (path, mtime_ns, size, inode) of every file."""
    p = Path(path)
    try:
        if p.is_file():
            st = p.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        if p.is_dir():
            out = []
            for f in source_files(p):
                st = f.stat()
                out.append((f.relative_to(p).as_posix(), st.st_mtime_ns, st.st_size, st.st_ino))
            return tuple(out)
    except OSError as e:
        return ("error", str(e))
    return ("missing",)


# ---- Control RPCs ----

Handler = Callable[..., Any]


def control_handlers(live: LiveBundles) -> dict[str, grpc.RpcMethodHandler]:
    """{method name: handler} for the bundle methods of `decider.v1.Control`; app.py merges these
    with the other Control handlers into one generic handler."""

    async def _run(context: grpc.aio.ServicerContext, op: Callable[[], Any]) -> Any:
        try:
            return await op()
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except AmbiguousRevision as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"revision: {e}")
        except LookupError as e:
            await context.abort(grpc.StatusCode.NOT_FOUND if "no stored" in str(e)
                                else grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except (DeciderError, OSError) as e:
            # Fails to load, type-check or verify here: refused, the active bundle is unchanged.
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"bundle refused: {_load_errors(e)}")

    async def activate(req: pb.ActivateBundleRequest, context: grpc.aio.ServicerContext) -> pb.BundleInfo:
        async def op() -> pb.BundleInfo:
            loaded = await live.activate(req.revision.strip())
            return live.info(loaded, live.activated_at, active=True)
        return await _run(context, op)

    async def rollback(req: pb.RollbackBundleRequest, context: grpc.aio.ServicerContext) -> pb.BundleInfo:
        async def op() -> pb.BundleInfo:
            loaded = await live.rollback()
            return live.info(loaded, live.activated_at, active=True)
        return await _run(context, op)

    async def set_shadow(req: pb.SetShadowBundleRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        async def op() -> pb.StatusResponse:
            await live.set_shadow(req.revision.strip())
            return live.status()
        return await _run(context, op)

    async def list_bundles(req: pb.ListBundlesRequest, context: grpc.aio.ServicerContext) -> pb.ListBundlesResponse:
        return await asyncio.to_thread(live.list_bundles)

    async def status(req: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        out = live.status()
        out.budgets.extend(await asyncio.to_thread(live.budget_status))
        return out

    def unary(fn: Handler, req_type: Any, resp_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req_type.FromString,
                                                   response_serializer=resp_type.SerializeToString)

    return {
        "ActivateBundle": unary(activate, pb.ActivateBundleRequest, pb.BundleInfo),
        "RollbackBundle": unary(rollback, pb.RollbackBundleRequest, pb.BundleInfo),
        "SetShadowBundle": unary(set_shadow, pb.SetShadowBundleRequest, pb.StatusResponse),
        "ListBundles": unary(list_bundles, pb.ListBundlesRequest, pb.ListBundlesResponse),
        "Status": unary(status, pb.StatusRequest, pb.StatusResponse),
    }
