"""A saved or deleted quota is in force on every process within moments: after the commit it is
written to Redis, where every check reads it; so is a group's list of deployments, weights and
policy. (The periodic tend also re-writes all quotas and groups.)"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from completions.lines import group_sync, key_quota_sync, line_forget, quota_sync
from completions.models import ApiKey, DeploymentPrice, ModelGroup, ServedModel
from ratelimit.models import KeyQuota, Quota
from ratelimit.names import group_line, key_line, line_name

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
        if deleted and served.group_id is None:
            _forget(line_name(served.provider.name, served.name))  # unlimited now: no line
        if served.group_id is not None:
            _group_sync_now(served.group_id)

    transaction.on_commit(sync)


def _group_sync_now(group_id: int | None) -> None:
    group = ModelGroup.objects.filter(pk=group_id).first() if group_id is not None else None
    if group is None:
        return
    try:
        _expire(group_sync(group=group).request_ids)
    except Exception:  # Redis down: the periodic tend catches up.
        logger.exception("could not put model group %s in force now", group)


@receiver(post_save, sender=ModelGroup)
def group_saved(sender: Any, instance: ModelGroup, **kwargs: Any) -> None:
    transaction.on_commit(lambda: _group_sync_now(instance.pk))


@receiver(post_save, sender=ServedModel)
def deployment_saved(sender: Any, instance: ServedModel, **kwargs: Any) -> None:
    """A model joined, left or changed in a group: both groups' lines learn it (the one it left
    from `group_before`, set when it was loaded)."""
    groups = {instance.group_id, instance.group_before} - {None}

    def sync() -> None:
        for group_id in groups:
            _group_sync_now(group_id)

    transaction.on_commit(sync)


@receiver([post_save, post_delete], sender=DeploymentPrice)
def price_changed(sender: Any, instance: DeploymentPrice, **kwargs: Any) -> None:
    """A group that picks its deployment by cost learns the new price (the tend would, within a
    few seconds, anyway)."""
    group_id = (
        ServedModel.objects.filter(pk=instance.served_model_id).values_list("group_id", flat=True).first()
    )
    if group_id is not None:
        transaction.on_commit(lambda: _group_sync_now(group_id))


@receiver(post_delete, sender=ServedModel)
def deployment_deleted(sender: Any, instance: ServedModel, **kwargs: Any) -> None:
    """A deleted model's line learns it, and the requests waiting for it alone end cancelled with
    the reason (nothing could serve them: its queue is no longer consumed once workers restart;
    to let them finish, disable it and delete it once drained — the admin says so first)."""
    group_id = instance.group_id
    provider, model = instance.provider.name, instance.name  # loaded with it by the deletion
    group_name = instance.group.name if instance.group is not None else ""
    deployment_id = str(instance.pk)

    def after() -> None:
        from completions.services import served_model_waiting_cancel

        _group_sync_now(group_id)
        _forget(line_name(provider, model))
        if group_name:
            _forget(group_line(group_name), deployment_id)
        try:
            served_model_waiting_cancel(
                provider=provider, model=model, reason=f"Cancelled: {provider}/{model} was deleted."
            )
        except Exception:  # Redis down: the sweep cancels them (queued for a model that is gone)
            logger.exception("could not cancel the requests waiting for %s/%s", provider, model)

    transaction.on_commit(after)


def _forget(line: str, deployment: str = "") -> None:
    try:
        line_forget(line=line, deployment=deployment)
    except Exception:  # Redis down: its keys stay, harmless, until the line is used or reset
        logger.warning("could not forget the Redis keys of %s", line, exc_info=True)


@receiver(post_delete, sender=ModelGroup)
def group_deleted(sender: Any, instance: ModelGroup, **kwargs: Any) -> None:
    line = instance.line
    transaction.on_commit(lambda: _forget(line))


@receiver(post_delete, sender=ApiKey)
def key_deleted(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    line = key_line(instance.pk)
    transaction.on_commit(lambda: _forget(line))


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
        if deleted:
            _forget(key_line(key_quota.api_key_id))

    transaction.on_commit(sync)


@receiver(post_save, sender=KeyQuota)
def key_quota_saved(sender: Any, instance: KeyQuota, **kwargs: Any) -> None:
    _key_sync_after_commit(instance, deleted=False)


@receiver(post_delete, sender=KeyQuota)
def key_quota_deleted(sender: Any, instance: KeyQuota, **kwargs: Any) -> None:
    _key_sync_after_commit(instance, deleted=True)
