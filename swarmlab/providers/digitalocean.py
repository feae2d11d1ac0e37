"""The ``digitalocean`` provider: droplets for one experiment run, created and found by tag.

Every droplet carries two tags: ``swarmlab-exp-<experiment>`` and
``swarmlab-run-<experiment>-<run id>`` (plus ``provider.digitalocean.tags``). The run tag's
listing is the truth. :meth:`DigitalOceanProvider.provision` lists it first and creates only the
planned names that are missing, ten names per ``POST /v2/droplets``, managers before workers.
Then it polls the same listing (one paginated list per poll, 200 droplets per page) until every
droplet is ``active`` with addresses. :meth:`~DigitalOceanProvider.teardown` deletes by tag and
lists until nothing is left, so it needs nothing but the experiment name and the run id.

Requests go through :class:`~swarmlab.doapi.session.ApiSession` with a shared
:class:`~swarmlab.doapi.ratelimit.RateLimiter`. A create whose outcome is unknown (connection
lost after sending, timeout, 5xx) is never repeated blindly: its names are created again only
if the next listing, made at least ``request_timeout`` seconds later, does not show them.

SSH host keys are generated here (ed25519) and travel in the cloud-init user data. Their public
halves are stored in ``<state_dir>/<experiment>/<run id>/digitalocean-host-keys.jsonl`` before
the create is sent, so a re-run pins droplets an earlier process created.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import digitalocean

from swarmlab.doapi import preflight as checks
from swarmlab.doapi.client import MAX_NAMES_PER_CREATE, TIMEOUT_VARIABLE, TOKEN_VARIABLE, DOClient
from swarmlab.doapi.clock import Clock
from swarmlab.doapi.cloudinit import build_user_data, generate_host_key
from swarmlab.doapi.errors import (
    DigitalOceanError,
    DOApiError,
    PreflightError,
    ProvisionTimeout,
    TeardownTimeout,
    UncertainOutcomeError,
)
from swarmlab.doapi.preflight import TAG_PATTERN, PreflightReport, call_or_fail
from swarmlab.doapi.ratelimit import RateLimiter
from swarmlab.doapi.session import ApiSession
from swarmlab.inventory import Inventory, Node, Role, node_name
from swarmlab.providers.base import ProvisionResult
from swarmlab.record import RUNS_ROOT
from swarmlab.spec import ExperimentSpec

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, message)``, e.g. ``(412, 500, "412/500 active")``."""

PER_PAGE = 200


@dataclass(frozen=True)
class PlannedDroplet:
    name: str
    role: Role
    index: int
    size: str


@dataclass
class _CreateOutcome:
    accepted: list[str] = field(default_factory=list)
    uncertain: dict[str, float] = field(default_factory=dict)
    uncertain_requests: int = 0
    error: DOApiError | None = None


class HostKeyStore:
    """Public SSH host keys of one run's droplets, in a JSON-lines file.

    Each line maps droplet names to ``type base64`` public keys; a later line wins for a name
    created again. Appending keeps a batch's write small however many droplets the run has,
    and a line cut short by a crash is skipped on reading.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return keys
        for line in lines:
            try:
                keys.update(json.loads(line))
            except ValueError:
                log.warning("skipping a damaged line in %s", self.path)
        return keys

    def add(self, keys: dict[str, str]) -> None:
        """Append ``keys`` and flush them to disk before returning."""
        line = json.dumps(keys, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as file:
                file.write(line)
                file.flush()
                os.fsync(file.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class DigitalOceanProvider:
    """Creates, finds and destroys the droplets of one experiment on DigitalOcean.

    Args:
        spec: the experiment; ``spec.provider.digitalocean`` sets region, sizes, image, keys.
        token: the API token, e.g. from a Prefect Secret block; without one the environment
            variable ``DIGITALOCEAN_ACCESS_TOKEN`` is read. It is never logged or put in an error.
        clock: API time; tests against the local server pass a scaled clock.
        state_dir: folder for the per-run host-key files; by default the run records' root
            (``SWARMLAB_RUNS`` or ``runs``).

    The API endpoint comes only from ``DIGITALOCEAN_END_POINT`` (default: the real API).

    Raises:
        PreflightError: no token was given and the environment has none.
    """

    kind = "digitalocean"

    def __init__(
        self,
        spec: ExperimentSpec,
        token: str | None = None,
        *,
        clock: Clock | None = None,
        state_dir: str | Path | None = None,
    ):
        self.spec = spec
        self.settings = spec.provider.digitalocean
        token = token or os.environ.get(TOKEN_VARIABLE, "")
        if not token.strip():
            raise PreflightError(
                [
                    "no DigitalOcean API token: set DIGITALOCEAN_ACCESS_TOKEN or pass the token "
                    "(for example from a Prefect Secret block)"
                ]
            )
        # python-digitalocean has no timeout unless this variable is set.
        os.environ.setdefault(TIMEOUT_VARIABLE, str(self.settings.request_timeout))
        self.clock = clock or Clock()
        self.limiter = RateLimiter(clock=self.clock)
        self.session = ApiSession(self.limiter, timeout=self.settings.request_timeout)
        self.client = DOClient(token.strip(), self.session)
        self.state_dir = Path(state_dir) if state_dir is not None else RUNS_ROOT

    @property
    def ssh_identity(self) -> Path:
        """Private key the pipeline uses to reach droplets ($SWARMLAB_SSH_KEY, else the spec's)."""
        return Path(os.path.expanduser(os.environ.get("SWARMLAB_SSH_KEY") or self.settings.ssh_private_key))

    def __repr__(self) -> str:
        return f"DigitalOceanProvider(experiment={self.spec.name!r}, end_point={self.client.end_point!r})"

    # Names and tags.

    @property
    def experiment_tag(self) -> str:
        return f"swarmlab-exp-{self.spec.name}"

    def run_tag(self, run_id: str) -> str:
        """Return the run's tag; raises ValueError for a run id a tag cannot hold."""
        tag = f"swarmlab-run-{self.spec.name}-{run_id}"
        if not TAG_PATTERN.match(tag):
            raise ValueError(
                f"run id {run_id!r} cannot be part of a DigitalOcean tag; use letters, digits, "
                "dashes, underscores and colons, at most 255 characters in all"
            )
        return tag

    def planned(self) -> list[PlannedDroplet]:
        """Return the droplets of the spec, managers first."""
        settings = self.settings
        managers = [
            PlannedDroplet(node_name(self.spec.name, "manager", i), "manager", i, settings.manager_size)
            for i in range(1, self.spec.managers.count + 1)
        ]
        workers = [
            PlannedDroplet(node_name(self.spec.name, "worker", i), "worker", i, settings.worker_size)
            for i in range(1, self.spec.workers.count + 1)
        ]
        return managers + workers

    def _key_store(self, run_id: str) -> HostKeyStore:
        return HostKeyStore(self.state_dir / self.spec.name / run_id / "digitalocean-host-keys.jsonl")

    # Preflight.

    def preflight(self, run_id: str | None = None) -> PreflightReport:
        """Check that the plan fits the account before anything is created.

        Checks the token, the account's ``droplet_limit`` against the droplets to create plus
        those that exist, region, sizes, image, SSH keys, tags and the user data size.

        Raises:
            PreflightError: one line per problem, each saying what to change.
        """
        return self._preflight(run_id)[0]

    def _preflight(self, run_id: str | None) -> tuple[PreflightReport, dict[str, list[digitalocean.Droplet]]]:
        """Run the checks; also return the run's droplets by name (empty without ``run_id``)."""
        run_tag = self.run_tag(run_id) if run_id else None
        client = self.client
        account = call_or_fail(client, client.account)
        existing = call_or_fail(client, lambda: self._list_by_name(run_tag)) if run_tag else {}

        planned = self.planned()
        existing_planned = sum(1 for p in planned if p.name in existing)
        to_create = len(planned) - existing_planned
        account_droplets = call_or_fail(client, client.count_droplets)
        user_data_bytes = self._largest_user_data()
        problems = [
            *checks.account_problems(account),
            *checks.region_and_size_problems(client, self.settings),
            *checks.image_problems(client, self.settings),
            *checks.ssh_key_problems(client, self.settings),
            *checks.tag_problems(self.settings),
            *checks.user_data_problems(user_data_bytes),
            *checks.droplet_limit_problems(int(account.droplet_limit), account_droplets, to_create),
        ]
        if problems:
            raise PreflightError(problems)

        report = PreflightReport(
            droplet_limit=int(account.droplet_limit),
            account_droplets=account_droplets,
            planned=len(planned),
            existing_in_run=existing_planned,
            to_create=to_create,
            user_data_bytes=user_data_bytes,
        )
        log.info(
            "preflight: %d droplets planned, %d exist, %d to create; account has %d of %d",
            report.planned,
            report.existing_in_run,
            report.to_create,
            report.account_droplets,
            report.droplet_limit,
        )
        return report, existing

    def _largest_user_data(self) -> int:
        names = [p.name for p in self.planned()]
        longest = sorted(names, key=len)[-self.settings.create_batch :]
        keys = {name: generate_host_key() for name in longest}
        return len(self._user_data(keys, "run-id-placeholder").encode())

    def _user_data(self, keys: dict, run_id: str) -> str:
        return build_user_data(
            keys,
            dict(self.spec.tuning.sysctls),
            persist_sysctls=self.spec.tuning.persist,
            extra_runcmd=self.settings.extra_runcmd,
            header=f"swarmlab experiment {self.spec.name} run {run_id}",
        )

    # Provisioning.

    def provision(self, run_id: str, progress: ProgressCallback | None = None) -> ProvisionResult:
        """Create the run's missing droplets and wait until all are active with addresses.

        Args:
            run_id: the run; its tag finds droplets an earlier call created.
            progress: called as ``progress(done, total, message)`` after each create request
                and each poll.

        Returns:
            The inventory (managers first), the names created now, the names reused, and the
            API seconds it took (wall-clock seconds with the default clock).

        Raises:
            PreflightError: the plan does not fit the account; nothing was created.
            DOApiError: the API rejected a create; droplets created before it remain and
                :meth:`teardown` removes them.
            ProvisionTimeout: droplets were not active within ``active_deadline``.
        """
        started = self.clock.monotonic()
        stats_before = replace(self.session.stats)
        run_tag = self.run_tag(run_id)
        _, existing = self._preflight(run_id)

        planned = self.planned()
        reused = [p.name for p in planned if p.name in existing]
        missing = [p for p in planned if p.name not in existing]
        store = self._key_store(run_id)
        unplanned = sorted(set(existing) - {p.name for p in planned})
        if unplanned:
            log.warning(
                "%d droplets under %s are not in the plan (e.g. %s); they are left alone and teardown removes them",
                len(unplanned),
                run_tag,
                ", ".join(unplanned[:5]),
            )
        log.info(
            "provision %s: %d droplets planned, %d exist, %d to create",
            run_tag,
            len(planned),
            len(reused),
            len(missing),
        )

        outcome = _CreateOutcome()
        self._create(run_id, missing, store, outcome, progress, len(planned))
        if outcome.error is not None:
            raise outcome.error
        droplets = self._wait_active(run_id, planned, store, outcome, progress)

        inventory = self._inventory(planned, droplets, store.load())
        created = [p.name for p in missing]
        seconds = self.clock.monotonic() - started
        stats = self.session.stats
        log.info(
            "provision %s: %d droplets active in %.0f s (%d created, %d reused); "
            "%d API requests, %d retried (%d after a 429)",
            run_tag,
            len(inventory.nodes),
            seconds,
            len(created),
            len(reused),
            stats.attempts - stats_before.attempts,
            stats.retries - stats_before.retries,
            stats.rate_limited - stats_before.rate_limited,
        )
        return ProvisionResult(inventory=inventory, created=tuple(created), reused=tuple(reused), seconds=seconds)

    def _create(
        self,
        run_id: str,
        droplets: list[PlannedDroplet],
        store: HostKeyStore,
        outcome: _CreateOutcome,
        progress: ProgressCallback | None,
        total: int,
    ) -> None:
        """Create ``droplets`` in batches, managers' batches before any worker batch."""
        batch_size = min(self.settings.create_batch, MAX_NAMES_PER_CREATE)
        stop = threading.Event()
        lock = threading.Lock()

        def create(batch: list[PlannedDroplet]) -> None:
            if stop.is_set():
                return
            names = [p.name for p in batch]
            keys = {name: generate_host_key() for name in names}
            # The public keys are stored before the request, so a droplet created by a request
            # whose response is lost can still be pinned.
            store.add({name: key.public for name, key in keys.items()})
            try:
                self.client.create_droplets(
                    names,
                    size=batch[0].size,
                    image=self.settings.image,
                    region=self.settings.region,
                    ssh_keys=list(self.settings.ssh_keys),
                    tags=self._tags(run_id),
                    user_data=self._user_data(keys, run_id),
                    vpc_uuid=self.settings.vpc_uuid,
                )
            except UncertainOutcomeError as error:
                log.debug("create of %s may have failed (%s); the next listing decides", names, error)
                with lock:
                    outcome.uncertain.update((name, self.clock.monotonic()) for name in names)
                    outcome.uncertain_requests += 1
                return
            except DOApiError as error:
                stop.set()
                with lock:
                    outcome.error = outcome.error or error
                log.error("create of %s failed: %s; no further creates are sent", names, error)
                return
            with lock:
                outcome.accepted.extend(names)
                done = len(outcome.accepted)
            if progress:
                progress(done, total, f"{done}/{total} droplets created")

        for role in ("manager", "worker"):
            group = [p for p in droplets if p.role == role]
            # A create request has one size, and managers and workers differ in size.
            batches = [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
            if not batches:
                continue
            with ThreadPoolExecutor(self.settings.create_concurrency, thread_name_prefix="do-create") as pool:
                list(pool.map(create, batches))
            if stop.is_set():
                return

    def _tags(self, run_id: str) -> list[str]:
        return list(dict.fromkeys([self.experiment_tag, self.run_tag(run_id), *self.settings.tags]))

    def _wait_active(
        self,
        run_id: str,
        planned: list[PlannedDroplet],
        store: HostKeyStore,
        outcome: _CreateOutcome,
        progress: ProgressCallback | None,
    ) -> dict[str, digitalocean.Droplet]:
        """Poll the run's listing until every planned droplet is active with a public address.

        Names missing from a listing (a create whose response was lost and that did not take
        effect) are created again once ``request_timeout`` has passed since that create.
        """
        run_tag = self.run_tag(run_id)
        deadline = self.clock.monotonic() + self.settings.active_deadline
        by_name = {p.name: p for p in planned}
        grace = self.settings.request_timeout
        while True:
            if outcome.uncertain:
                log.warning(
                    "%s: %d create requests (%d names) had an unknown outcome; listing before "
                    "creating any of them again",
                    run_tag,
                    outcome.uncertain_requests,
                    len(outcome.uncertain),
                )
                outcome.uncertain_requests = 0
                # A create that timed out may still be in progress on the server.
                ready_at = max(outcome.uncertain.values()) + grace
                self.clock.sleep(ready_at - self.clock.monotonic())
            listed = self._list_by_name(run_tag)
            chosen = {name: versions[0] for name, versions in listed.items() if name in by_name}

            # An accepted create is listed at once. A name that is missing and was never
            # accepted belongs to a create whose response was lost and that did not take effect.
            accepted = set(outcome.accepted)
            missing = [by_name[n] for n in by_name if n not in chosen and n not in accepted]
            if missing:
                if self.clock.monotonic() > deadline:
                    raise ProvisionTimeout(
                        f"{len(missing)} droplets were still not created after "
                        "provider.digitalocean.active_deadline "
                        f"({self.settings.active_deadline:.0f} s) because creates kept failing; "
                        "check the API status, then provision again"
                    )
                log.warning(
                    "%d planned droplets are not listed after creates with an unknown outcome; creating them",
                    len(missing),
                )
                outcome.uncertain.clear()
                self._create(run_id, missing, store, outcome, progress, len(planned))
                if outcome.error is not None:
                    raise outcome.error
                continue
            outcome.uncertain.clear()

            ready = [d for d in chosen.values() if d.status == "active" and d.ip_address]
            pending = [d for d in chosen.values() if not (d.status == "active" and d.ip_address)]
            unlisted = len(by_name) - len(chosen)
            remaining = deadline - self.clock.monotonic()
            message = f"{len(ready)}/{len(planned)} droplets active, {len(pending)} new"
            if unlisted:
                message += f", {unlisted} accepted but not listed"
            log.info("%s: %s, deadline in %.0f s", run_tag, message, max(0.0, remaining))
            if progress:
                progress(len(ready), len(planned), message)
            if not pending and not unlisted:
                return chosen
            if remaining <= 0:
                late = sorted([d.name for d in pending] + [n for n in by_name if n not in chosen])
                raise ProvisionTimeout(
                    f"{len(late)} of {len(planned)} droplets were not active with addresses "
                    "after provider.digitalocean.active_deadline "
                    f"({self.settings.active_deadline:.0f} s), "
                    f"e.g. {', '.join(late[:10])}; raise the deadline or run teardown and "
                    "provision again"
                )
            self.clock.sleep(min(self._poll_wait(ready, pending, len(listed)), remaining))

    def _poll_wait(self, ready: list, pending: list, listed: int) -> float:
        """Return API seconds until the next poll.

        At least ``poll_interval``, and at least twice the time one listing takes in the
        per-minute budget. If some droplets are active, wait until the newest pending droplet
        has had as long as the newest active one needed (boot times are similar).
        """
        pages = max(1, -(-listed // PER_PAGE))
        interval = max(self.settings.poll_interval, 2 * pages * 60 / self.limiter.minute_budget)
        if not ready or not pending:
            return interval
        newest_ready = max(_created(d) for d in ready)
        newest_pending = max(_created(d) for d in pending)
        return max(interval, newest_pending - newest_ready)

    def _list_by_name(self, tag: str) -> dict[str, list[digitalocean.Droplet]]:
        """Return the tag's droplets by name, oldest first where a name appears twice."""
        by_name: dict[str, list[digitalocean.Droplet]] = {}
        for droplet in self.client.droplets_by_tag(tag):
            by_name.setdefault(droplet.name, []).append(droplet)
        for name, versions in by_name.items():
            versions.sort(key=lambda d: d.id)
            if len(versions) > 1:
                log.warning(
                    "droplet name %s appears %d times under tag %s (ids %s); using the oldest, teardown removes all",
                    name,
                    len(versions),
                    tag,
                    [d.id for d in versions],
                )
        return by_name

    def _inventory(
        self,
        planned: list[PlannedDroplet],
        droplets: dict[str, digitalocean.Droplet],
        host_keys: dict[str, str],
    ) -> Inventory:
        nodes = []
        unpinned = []
        for p in planned:
            droplet = droplets.get(p.name)
            if droplet is None:
                continue
            key = host_keys.get(p.name)
            if key is None:
                unpinned.append(p.name)
            nodes.append(self._node(p.name, p.role, p.index, droplet, key))
        if unpinned:
            log.warning(
                "%d droplets have no stored host key (its file is gone), e.g. %s; SSH rejects "
                "them: run teardown and provision again",
                len(unpinned),
                ", ".join(unpinned[:5]),
            )
        return Inventory(nodes=tuple(nodes))

    def _node(self, name: str, role: Role, index: int, droplet: digitalocean.Droplet, key: str | None) -> Node:
        public = droplet.ip_address or ""
        return Node(
            name=name,
            role=role,
            index=index,
            address=public,
            advertise_address=droplet.private_ip_address or public,
            provider_id=str(droplet.id),
            host_keys=(key,) if key else (),
            labels={
                "do_size": str(droplet.size_slug),
                "do_region": str((droplet.region or {}).get("slug", "")),
            },
        )

    def list_nodes(self, run_id: str) -> Inventory:
        """Return the run's droplets that carry one of its node names, managers first.

        A droplet still ``new`` has an empty ``address``.
        """
        pattern = re.compile(rf"^{re.escape(self.spec.name)}-(m|w)([1-9][0-9]*)$")
        host_keys = self._key_store(run_id).load()
        nodes = []
        for name, versions in self._list_by_name(self.run_tag(run_id)).items():
            match = pattern.match(name)
            if not match:
                continue
            role: Role = "manager" if match.group(1) == "m" else "worker"
            nodes.append(self._node(name, role, int(match.group(2)), versions[0], host_keys.get(name)))
        nodes.sort(key=lambda n: (n.role != "manager", n.index))
        return Inventory(nodes=tuple(nodes))

    # Teardown.

    def teardown(self, run_id: str | None) -> list[str]:
        """Destroy the run's droplets, or all of the experiment's when ``run_id`` is None.

        Deletes by tag and lists until none remain; needs no run record.

        Returns:
            The names of the droplets deleted, sorted.

        Raises:
            TeardownTimeout: droplets were still listed after ``delete_deadline``.
        """
        tag = self.run_tag(run_id) if run_id is not None else self.experiment_tag
        droplets = self.client.droplets_by_tag(tag)
        names = sorted({d.name for d in droplets})
        if droplets:
            log.info("teardown %s: deleting %d droplets by tag", tag, len(droplets))
            self._delete_by_tag(tag)
            self._wait_gone(tag, {d.id for d in droplets})
        if run_id is not None:
            self._key_store(run_id).remove()
        else:
            for path in (self.state_dir / self.spec.name).glob("*/digitalocean-host-keys.jsonl"):
                path.unlink(missing_ok=True)
        log.info("teardown %s: %d droplets deleted", tag, len(names))
        return names

    def _delete_by_tag(self, tag: str) -> None:
        try:
            self.client.delete_droplets_by_tag(tag)
        except DOApiError as error:
            if error.status != 404:  # 404: the tag is gone, so are its droplets
                raise

    def _wait_gone(self, tag: str, deleted: set[int]) -> None:
        deadline = self.clock.monotonic() + self.settings.delete_deadline
        wait = min(self.settings.poll_interval, 5.0)
        while True:
            self.clock.sleep(wait)
            remaining = self.client.droplets_by_tag(tag)
            if not remaining:
                return
            if self.clock.monotonic() > deadline:
                names = ", ".join(sorted(d.name for d in remaining)[:10])
                raise TeardownTimeout(
                    f"{len(remaining)} droplets tagged {tag} were still listed after "
                    "provider.digitalocean.delete_deadline "
                    f"({self.settings.delete_deadline:.0f} s), "
                    f"e.g. {names}; run teardown again"
                )
            fresh = {d.id for d in remaining} - deleted
            if fresh:
                # Droplets created after the delete (e.g. by a provision still running).
                log.warning(
                    "teardown %s: %d droplets appeared after the delete; deleting again",
                    tag,
                    len(fresh),
                )
                self._delete_by_tag(tag)
                deleted |= fresh
            log.info("teardown %s: %d droplets still listed", tag, len(remaining))

    def kernel_wide_tuning(self) -> bool:
        """Return False: every droplet has its own kernel, so each is tuned over SSH."""
        return False


def _created(droplet: digitalocean.Droplet) -> float:
    return datetime.fromisoformat(str(droplet.created_at).replace("Z", "+00:00")).timestamp()


__all__ = [
    "DigitalOceanError",
    "DigitalOceanProvider",
    "HostKeyStore",
    "PreflightReport",
    "ProgressCallback",
]
