"""Reads of prompt templates: the version a request uses, and the catalog consumers discover them with."""

from __future__ import annotations

from django.db.models import Prefetch

from llm import model_access
from llm.errors import InvalidRequest
from llm.models import PromptTemplate, PromptTemplateVersion


def known_tasks() -> dict[str, list[str]]:
    """Active roles and their tasks, sorted: {"copywriter": ["ad_headline", ...], ...}."""
    known: dict[str, list[str]] = {}
    for role, task in PromptTemplate.objects.filter(is_active=True, versions__isnull=False).distinct() \
            .order_by("role", "task").values_list("role", "task"):
        known.setdefault(role, []).append(task)
    return known


def current_version_for(role: str, task: str) -> PromptTemplateVersion:
    """The current version of the active template for (role, task); InvalidRequest listing the known ones."""
    version = (PromptTemplateVersion.objects.select_related("template")
               .filter(template__role=role, template__task=task, template__is_active=True)
               .order_by("-number").first())
    if version is not None:
        return version
    known = known_tasks()
    if role not in known:
        raise InvalidRequest(
            f"Unknown role {role!r}. Known roles: {', '.join(known) or '(none)'}. "
            "GET /api/v1/llm/templates lists roles, tasks and their payload fields.",
            details={"role": [f"Unknown role. Known roles: {', '.join(known)}."]},
        )
    raise InvalidRequest(
        f"Unknown task {task!r} for role {role!r}. Known tasks for {role}: {', '.join(known[role])}.",
        details={"task": [f"Unknown task for role {role}. Known tasks: {', '.join(known[role])}."]},
    )


def template_catalog(consumer) -> dict:
    """What a consumer discovers: {"roles": {role: [task, ...]}, "templates": [active templates]}.

    Only the models the consumer may use are listed (`.models`, `.allowed_models` on each template); a template
    none of whose models it may use is left out, as a request for it could only be refused.
    """
    roles: dict[str, list[str]] = {}
    listed = []
    for template in active_templates():
        version = template.current
        template.models = model_access.visible(consumer, version.model_chain())
        template.allowed_models = model_access.visible(consumer, version.allowed_model_names())
        if not template.allowed_models:
            continue
        listed.append(template)
        roles.setdefault(template.role, []).append(template.task)
    return {"roles": roles, "templates": listed}


def active_templates() -> list[PromptTemplate]:
    """Active templates with their current version as `.current`, ordered by role and task."""
    templates = PromptTemplate.objects.filter(is_active=True).prefetch_related(
        Prefetch("versions", queryset=PromptTemplateVersion.objects.order_by("-number"), to_attr="newest_first"))
    listed = []
    for template in templates.order_by("role", "task"):
        if template.newest_first:
            template.current = template.newest_first[0]
            listed.append(template)
    return listed


def template_model_names() -> list[str]:
    """Every model an active template's current version may use, OLLAMA_DEFAULT_MODEL first: the mock's models."""
    from django.conf import settings

    names = [settings.OLLAMA_DEFAULT_MODEL]
    for template in PromptTemplate.objects.filter(is_active=True).order_by("role", "task"):
        version = template.current_version
        if version is not None:
            names.extend(version.allowed_model_names())
    return list(dict.fromkeys(names))
