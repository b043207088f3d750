"""A deterministic provider that needs no model: same request, same reply."""

import hashlib
import json
import time

from .base import GenerationRequest, ProviderReply


class MockProvider:
    name = "mock"

    def __init__(self, *, delay: float):
        self.delay = delay

    def generate(self, request: GenerationRequest) -> ProviderReply:
        started = time.perf_counter()
        if self.delay:
            time.sleep(self.delay)
        digest = hashlib.sha256(
            json.dumps([request.role, request.task, request.payload, request.model], sort_keys=True).encode()
        ).hexdigest()[:16]
        if request.mode == "json":
            content = json.dumps(
                {"role": request.role, "task": request.task, "payload": request.payload,
                 "model": request.model, "digest": digest, "mock": True},
                ensure_ascii=False,
            )
        else:
            content = f"[mock {digest}] {request.role} would now {request.task} for {json.dumps(request.payload)}"
        prompt_words = sum(len(m["content"].split()) for m in request.messages)
        return ProviderReply(
            content=content,
            model=request.model,
            prompt_tokens=prompt_words,
            completion_tokens=len(content.split()),
            upstream_ms=round((time.perf_counter() - started) * 1000, 2),
        )
