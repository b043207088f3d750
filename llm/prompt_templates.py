"""Writing prompt templates: every change of content is a new, numbered, immutable version."""

from __future__ import annotations

from django.db import transaction

from llm.models import VERSION_CONTENT, PromptTemplate, PromptTemplateVersion


@transaction.atomic
def save_version(*, template: PromptTemplate, content: dict, author: str = "") -> PromptTemplateVersion:
    """Make `content` the template's current version: a new version if it differs from the current one.

    Raises django.core.exceptions.ValidationError when the content is not a valid template.
    """
    # Lock the template row so that two editors saving at once get numbers n+1 and n+2, not an IntegrityError.
    PromptTemplate.objects.select_for_update().filter(pk=template.pk).first()
    current = template.current_version
    if current is not None and current.content() == {name: content.get(name) for name in VERSION_CONTENT}:
        return current
    version = PromptTemplateVersion(template=template, number=(current.number + 1) if current else 1,
                                    created_by=author, **{name: content[name] for name in VERSION_CONTENT})
    version.full_clean(exclude=["template"])
    version.save()
    return version
