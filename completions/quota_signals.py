"""A saved or deleted quota is in force on every process within moments: after the commit it is
written to Redis, where every check reads it. (The periodic tend also re-writes all quotas.)"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from completions.lines import key_quota_sync, quota_sync
from completions.models import ServedModel
from ratelimit.models import KeyQuota, Quota

logger = logging.getLogger(__name__)


def _expire(request_ids: list[str]) -> None:
    if request_ids:
        from completions.services import completion_requests_expire

        completion_requests_expire(request_ids=request_ids)


def _sync_after_commit(quota: Quota, deleted: bool) -> None:
    served_model_id = quota.served_model_id

    def sync() -> None:
        served = ServedModel.objects.select_related("provider").filter(id=served_model_id).first()
        if served is None:
            return
        try:
            _expire(quota_sync(served_model=served, quota=None if deleted else quota).request_ids)
        except Exception:  # Redis down: the periodic tend catches up.
            logger.exception("could not put the quota of %s in force now", served)

    transaction.on_commit(sync)


@receiver(post_save, sender=Quota)
def quota_saved(sender: Any, instance: Quota, **kwargs: Any) -> None:
    _sync_after_commit(instance, deleted=False)


@receiver(post_delete, sender=Quota)
def quota_deleted(sender: Any, instance: Quota, **kwargs: Any) -> None:
    _sync_after_commit(instance, deleted=True)


def _key_sync_after_commit(key_quota: KeyQuota, deleted: bool) -> None:
    def sync() -> None:
        try:
            _expire(key_quota_sync(key_quota=key_quota, deleted=deleted).request_ids)
        except Exception:
            logger.exception("could not put the quota of key %s in force now", key_quota.api_key_id)

    transaction.on_commit(sync)


@receiver(post_save, sender=KeyQuota)
def key_quota_saved(sender: Any, instance: KeyQuota, **kwargs: Any) -> None:
    _key_sync_after_commit(instance, deleted=False)


@receiver(post_delete, sender=KeyQuota)
def key_quota_deleted(sender: Any, instance: KeyQuota, **kwargs: Any) -> None:
    _key_sync_after_commit(instance, deleted=True)
