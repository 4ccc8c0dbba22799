"""Image puller: registry images are pulled once per site, pinned per task, before brokerage.

Each cycle it takes the open tasks whose ``docker://`` image is not pinned yet,
asks the registry once per reference what the tag points to now, and pulls that
digest into the site's image cache unless it is there (a tag that did not move
costs one manifest request, no pull). The tasks are then pinned to the digest:
their jobs run exactly that image, and a later move of the tag does not change
them. Pulls run outside any database transaction.

- The registry cannot be reached, or the pull fails here (a timeout, a full
  disk): the tasks keep a message saying so (their jobs stay ``defined`` and
  show it) and the reference is tried again with a back-off, doubling from the
  agent's interval up to :data:`MAX_BACKOFF_S`.
- The registry refuses the image (missing, digest mismatch, denied): the task's
  open jobs fail with ``image_pull_failed`` and the registry's message, without
  retries; a task without jobs yet (a scan) is ``broken`` with it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Task
from db.queue import for_change, transition
from harvester.agents.base import Agent
from harvester.context import HarvesterContext
from harvester.errors import ImageError, RegistryRefused
from harvester.images.reference import REGISTRY_SCHEME, RegistryReference
from harvester.images.registry import RegistryClient
from harvester.services.lifecycle import fail_job, open_jobs, roll_up_at_commit
from protocol.error_codes import PilotErrorCode
from protocol.states import TaskStatus

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
OPEN_TASK_STATES = (TaskStatus.REGISTERED, TaskStatus.READY, TaskStatus.RUNNING)


@dataclass(frozen=True)
class Outcome:
    """What one reference came to in this cycle."""

    digest: str | None = None
    waiting: str | None = None
    refused: str | None = None


class ImagePuller(Agent):
    name = "image-puller"

    def __init__(
        self, ctx: HarvesterContext, client: RegistryClient | None = None, **kwargs: float
    ) -> None:
        super().__init__(ctx, **kwargs)
        self.client = client or RegistryClient.for_site(ctx.images, ctx.settings)
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    def run_once(self) -> None:
        with self.ctx.reads() as session:
            waiting = session.execute(
                select(Task.id, Task.image).where(
                    Task.status.in_(OPEN_TASK_STATES),
                    Task.image.startswith(REGISTRY_SCHEME),
                    Task.image_digest.is_(None),
                )
            ).all()
        by_reference: dict[str, list[int]] = defaultdict(list)
        for task_id, image in waiting:
            by_reference[image].append(task_id)
        now = time.monotonic()
        for image, task_ids in by_reference.items():
            if self._retry_at.get(image, 0.0) > now:
                continue
            outcome = self._fetch(image)
            self._record(task_ids, image, outcome)

    def _fetch(self, image: str) -> Outcome:
        """Resolve and pull one reference; never raises for what the registry says."""
        try:
            reference = RegistryReference.parse(image)
            resolved = self.client.resolve(reference)
            _, pulled = self.client.pull(reference, resolved)
        except RegistryRefused as exc:
            log.warning("image %s refused: %s", image, exc)
            return Outcome(refused=str(exc))
        except (ImageError, OSError) as exc:  # down, timed out, or failed here: again later
            delay = min(self._backoff.get(image, self.interval_s / 2) * 2, MAX_BACKOFF_S)
            self._backoff[image] = delay
            self._retry_at[image] = time.monotonic() + delay
            log.info("image %s not available yet (next try in %.0fs): %s", image, delay, exc)
            return Outcome(waiting=f"waiting for image {image}: {exc}")
        self._backoff.pop(image, None)
        self._retry_at.pop(image, None)
        if pulled:
            log.info("pulled %s as %s", image, resolved.digest)
        return Outcome(digest=resolved.digest)

    def _record(self, task_ids: list[int], image: str, outcome: Outcome) -> None:
        with self.ctx.sessions.begin() as session:
            tasks = session.scalars(
                for_change(select(Task).where(Task.id.in_(task_ids)).order_by(Task.id))
            ).all()
            for task in tasks:
                if task.status not in OPEN_TASK_STATES or task.image_digest is not None:
                    continue  # killed meanwhile, or pinned by another instance
                if outcome.digest is not None:
                    task.image_digest = outcome.digest
                    task.image_message = None
                elif outcome.waiting is not None:
                    task.image_message = outcome.waiting
                elif outcome.refused is not None:
                    self._refuse(session, task, outcome.refused)

    def _refuse(self, session: Session, task: Task, message: str) -> None:
        task.image_message = message
        task.error_dialog = f"image {task.image} cannot be pulled: {message}"
        pending = open_jobs(session, task.id)
        if not pending:
            if task.status is not TaskStatus.REGISTERED:  # a split task: nothing will come
                transition(session, task, TaskStatus.BROKEN, reason=task.error_dialog)
            return  # registered: the splitter makes its jobs, failed on the next cycle
        for job in pending:
            fail_job(
                session,
                job,
                task,
                error_code=PilotErrorCode.IMAGE_PULL_FAILED,
                diagnostics=message,
                actor=self.name,
            )
        roll_up_at_commit(session, task)
