"""Turn a (role, task, payload, mode) request into the chat messages sent to a model.

The one place prompts are built; prompt templates per role and task will replace these defaults.
"""

import json

JSON_INSTRUCTION = (
    "Answer with a single JSON object and nothing else: no prose, no code fences. "
    "Choose keys that describe the content."
)
TEXT_INSTRUCTION = "Answer in plain text."


def system_prompt(role: str, mode: str) -> str:
    instruction = JSON_INSTRUCTION if mode == "json" else TEXT_INSTRUCTION
    return f"You are a {role}. Carry out the task you are given using the input provided. {instruction}"


def user_prompt(task: str, payload: dict) -> str:
    data = json.dumps(payload, ensure_ascii=False, indent=2, sort_keys=True)
    return f"Task: {task}\n\nInput (JSON):\n{data}"


def build_messages(*, role: str, task: str, payload: dict, mode: str) -> list[dict]:
    """The system and user messages for a request."""
    return [
        {"role": "system", "content": system_prompt(role, mode)},
        {"role": "user", "content": user_prompt(task, payload)},
    ]
