"""The prompt templates the gateway ships with, for marketing content.

The data is frozen here, not imported from app code, so that this migration means the same thing forever.
It only adds what is missing: a template staff have since edited (a later version) or deactivated is left
alone, and running it again changes nothing. Reversing it removes nothing: audit rows point to these versions.
"""

from django.db import migrations

SEED_AUTHOR = "seed migration"

SHARED_SYSTEM = (
    "Write in the language of the input. Never invent prices, awards, certifications, ingredients or health "
    "claims that the input does not state."
)

TEMPLATES = [
    {
        "role": "copywriter",
        "task": "sns",
        "description": "A social media post: caption, hashtags and a call to action.",
        "sample_payload": {"product": "Green tea", "tone": "calm"},
        "system_prompt": (
            "You are an experienced social media copywriter for consumer brands. You write short, concrete "
            "posts that sound like a person, not an advertisement. " + SHARED_SYSTEM
        ),
        "user_template": (
            "Write one social media post about {product}.\n"
            "Tone: {tone}.\n"
            "The caption is at most 280 characters. Give 3 to 6 relevant hashtags, each starting with #. "
            "End with a short call to action."
        ),
        "options": {"temperature": 0.8},
        "output_schema": {
            "type": "object",
            "properties": {
                "caption": {"type": "string", "minLength": 1, "maxLength": 280},
                "hashtags": {"type": "array", "items": {"type": "string", "minLength": 2},
                             "minItems": 1, "maxItems": 8},
                "call_to_action": {"type": "string", "minLength": 1},
            },
            "required": ["caption", "hashtags", "call_to_action"],
            "additionalProperties": False,
        },
    },
    {
        "role": "copywriter",
        "task": "product_description",
        "description": "A product page description: title, paragraph and bullet points.",
        "sample_payload": {"product": "Green tea", "features": ["organic", "grown in Shizuoka", "20 tea bags"],
                           "audience": "office workers who want a calm afternoon"},
        "system_prompt": (
            "You are an e-commerce copywriter. You turn product facts into clear, benefit-led descriptions "
            "that help a shopper decide. " + SHARED_SYSTEM
        ),
        "user_template": (
            "Write a product description for {product}.\n"
            "Facts to use: {features}\n"
            "Written for: {audience}\n"
            "Give a title of at most 80 characters, one paragraph of 60 to 120 words, and 3 to 5 bullet points."
        ),
        "options": {"temperature": 0.6},
        "output_schema": {
            "type": "object",
            "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 80},
                "description": {"type": "string", "minLength": 1},
                "bullet_points": {"type": "array", "items": {"type": "string", "minLength": 1},
                                  "minItems": 3, "maxItems": 5},
            },
            "required": ["title", "description", "bullet_points"],
            "additionalProperties": False,
        },
    },
    {
        "role": "copywriter",
        "task": "ad_headline",
        "description": "Ad headline variants, each with the angle it takes.",
        "sample_payload": {"product": "Green tea", "benefit": "calm focus without the coffee jitters",
                           "audience": "remote workers"},
        "system_prompt": (
            "You are a performance-marketing copywriter. You write short headlines that make one clear "
            "promise and earn the click honestly. " + SHARED_SYSTEM
        ),
        "user_template": (
            "Write 3 to 5 ad headlines for {product}.\n"
            "Key benefit: {benefit}\n"
            "Audience: {audience}\n"
            "Each headline is at most 60 characters and takes one angle: benefit, curiosity, urgency or "
            "social_proof. Use different angles."
        ),
        "options": {"temperature": 0.9},
        "output_schema": {
            "type": "object",
            "properties": {
                "headlines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "text": {"type": "string", "minLength": 1, "maxLength": 60},
                            "angle": {"enum": ["benefit", "curiosity", "urgency", "social_proof"]},
                        },
                        "required": ["text", "angle"],
                        "additionalProperties": False,
                    },
                    "minItems": 3,
                    "maxItems": 5,
                },
            },
            "required": ["headlines"],
            "additionalProperties": False,
        },
    },
    {
        "role": "marketer",
        "task": "campaign_brief",
        "description": "A one-page campaign brief: objective, audience, messages, channels and KPIs.",
        "sample_payload": {"product": "Green tea", "goal": "launch the new organic line",
                           "audience": "health-minded office workers aged 25-40", "budget": "5000 EUR",
                           "duration": "6 weeks"},
        "system_prompt": (
            "You are a senior marketing strategist. You write briefs a small team can act on: specific, "
            "measurable and honest about trade-offs. " + SHARED_SYSTEM
        ),
        "user_template": (
            "Write a campaign brief.\n"
            "Product: {product}\n"
            "Goal: {goal}\n"
            "Audience: {audience}\n"
            "Budget: {budget}\n"
            "Duration: {duration}\n"
            "Give 2 to 4 key messages, 1 to 4 channels each with why it fits the audience and budget, "
            "and 2 to 4 measurable KPIs."
        ),
        "options": {"temperature": 0.4},
        "output_schema": {
            "type": "object",
            "properties": {
                "objective": {"type": "string", "minLength": 1},
                "target_audience": {"type": "string", "minLength": 1},
                "key_messages": {"type": "array", "items": {"type": "string", "minLength": 1},
                                 "minItems": 2, "maxItems": 4},
                "channels": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string", "minLength": 1},
                                       "rationale": {"type": "string", "minLength": 1}},
                        "required": ["name", "rationale"],
                        "additionalProperties": False,
                    },
                    "minItems": 1,
                    "maxItems": 4,
                },
                "kpis": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 4},
            },
            "required": ["objective", "target_audience", "key_messages", "channels", "kpis"],
            "additionalProperties": False,
        },
    },
]

# Every shipped template: the gateway's OLLAMA_DEFAULT_MODEL first (model ""), then a small model that fits
# in less memory; a request may also name the smallest one.
ROUTING = {"mode": "json", "model": "", "fallback_models": ["llama3.2:3b"], "allowed_models": ["llama3.2:1b"]}


def seed_templates(apps, schema_editor=None):
    """Add each shipped template that is missing, with its first version."""
    PromptTemplate = apps.get_model("llm", "PromptTemplate")
    PromptTemplateVersion = apps.get_model("llm", "PromptTemplateVersion")
    for spec in TEMPLATES:
        template, _ = PromptTemplate.objects.get_or_create(
            role=spec["role"], task=spec["task"],
            defaults={"description": spec["description"], "sample_payload": spec["sample_payload"]},
        )
        if not PromptTemplateVersion.objects.filter(template=template).exists():
            PromptTemplateVersion.objects.create(
                template=template, number=1, created_by=SEED_AUTHOR, system_prompt=spec["system_prompt"],
                user_template=spec["user_template"], options=spec["options"], output_schema=spec["output_schema"],
                **ROUTING,
            )


class Migration(migrations.Migration):
    dependencies = [("llm", "0003_prompt_templates")]

    operations = [migrations.RunPython(seed_templates, migrations.RunPython.noop, elidable=False)]
