"""RouteLLM's released routers, loaded as they were published (e.g. `routellm/bert_gpt4_augmented`,
`routellm/causal_llm_gpt4_augmented` on the Hugging Face hub, or a local copy).

Their config.json is a plain transformers config with no "router" field, so the registry asks `detect` which
of the two formats a checkpoint is, then `load` reads it with transformers and scores as RouteLLM does
(lm-sys/RouteLLM, routellm/routers/routers.py):

- BERT: a sequence classifier with three labels (strong wins, tie, weak wins). The strong model's win rate is
  1 - P(tie) - P(weak wins), the softmax's first label.
- causal LLM: a causal LM (Llama-3-8B for the published one) fine-tuned to answer a system prompt plus
  "[Question] ... Prediction:" with one of five added tokens [[1]]..[[5]], the weak model's expected grade.
  The win rate is 1 - P(grade >= 4), from the logits of those five tokens. RouteLLM reads them where the
  first grade token is generated; the router was trained to answer with it at once, so this module reads
  them at the first generated position: one forward pass, no generation.

These routers are scored, not trained here: `routeyard router train --router bert` trains Routeyard's own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from routers.base import CONFIG_FILE, Router, RouterRuntime, TrainOptions
from routers.rows import Preference
from routeyard.errors import InvalidInput

Format = Literal["routellm_bert", "routellm_causal_llm"]
GRADE_TOKENS = ("[[1]]", "[[2]]", "[[3]]", "[[4]]", "[[5]]")
# The published causal router's prompts (system_ft_v5.txt and classifier_ft_v5.txt in its hub repository);
# a checkpoint that ships its own files is read with those instead.
SYSTEM_FILE, CLASSIFIER_FILE = "system_ft_v5.txt", "classifier_ft_v5.txt"
SYSTEM_MESSAGE = (
    "[Instruction]\nBased on the question provided below, predict the score an expert evaluator would give to an "
    "AI assistant's response, considering its helpfulness, relevance, adherence to facts, depth, creativity, and "
    "detail. Your prediction should infer the level of proficiency needed to address the question effectively. "
    "Use a scale from 1 to 5, where a higher score indicates a higher anticipated quality of response. Provide "
    "your prediction as: \"[[predicted rating]]\".\n\nScore criteria:\n- **4-5**: The AI assistant can produce a "
    "very strong answer, showing deep understanding, creativity, detailed insight, and high relevance.\n- **3**: "
    "The AI assistant can provide an adequate answer with moderate detail, relevance, and factual accuracy.\n- "
    "**1-2**: The AI assistant will struggle to produce a strong answer due to the question's difficulty, "
    "vagueness, or the assistant's limitations.\n")
CLASSIFIER_MESSAGE = "[Question]\n{question}\n\nPrediction:\n"
# Files a hub download needs besides the weights: the tokenizer's, the prompts'.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


def detect(saved: dict[str, Any]) -> Format | None:
    """Which RouteLLM format a config.json without a "router" field is, or None (not one of theirs)."""
    architectures = [str(a) for a in saved.get("architectures") or []]
    labels = saved.get("id2label") or {}
    if any(a.endswith("ForSequenceClassification") for a in architectures) and len(labels) == 3:
        return "routellm_bert"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "routellm_causal_llm"
    return None


def version(path: Path) -> str:
    """A content hash of what identifies the checkpoint (its configs and tokenizer, small files: hashing the
    weights of an 8B model would take minutes), plus each weight file's name and size."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix in (".json", ".txt", ".model"):
            digest.update(file.name.encode() + file.read_bytes())
        elif file.is_file() and file.suffix in (".safetensors", ".bin"):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class RouteLLMConfig:
    # Tokens read per prompt: RouteLLM truncates at the model's limit; 512 covers nearly every prompt and keeps
    # a CPU's attention cost bounded.
    max_length: int = 512
    # Causal format only: grades from this one up count as "the weak model does well" (RouteLLM's default, 4).
    score_threshold: int = 4


class _Published(Router[RouteLLMConfig]):
    config_class = RouteLLMConfig

    def __init__(self, config: RouteLLMConfig, runtime: RouterRuntime, model: Any, tokenizer: Any,
                 device: str) -> None:
        super().__init__(config, runtime)
        self.model, self.tokenizer, self.device = model, tokenizer, device

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> Router:
        raise InvalidInput(f"{cls.name} is RouteLLM's released checkpoint, scored as published; train "
                           "Routeyard's own with `routeyard router train --router bert` (or causal_llm)")

    def _batches(self, texts: Sequence[str], progress: Callable[[int], None] | None) -> Any:
        import torch

        size = max(1, self.runtime.batch_size)
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                chunk = list(texts[start:start + size])
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.config.max_length,
                                     return_tensors="pt").to(self.device)
                yield enc, self.model(**enc).logits.float()
                if progress:
                    progress(len(chunk))


class RouteLLMBertRouter(_Published):
    name = "routellm_bert"

    @classmethod
    def load(cls, path: Path, runtime: RouterRuntime) -> RouteLLMBertRouter:
        from routers.embeddings import resolve_device
        from routers.ml_imports import ML_IMPORT_LOCK

        with ML_IMPORT_LOCK:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = resolve_device(runtime.device)
        model: Any = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=3)
        model = model.to(device).eval()
        return cls(RouteLLMConfig(), runtime, model, AutoTokenizer.from_pretrained(str(path)), device)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        out = [logits.softmax(-1)[:, 0].cpu().numpy() for _, logits in self._batches(prompts, progress)]
        return np.concatenate(out) if out else np.zeros(0)


class RouteLLMCausalRouter(_Published):
    name = "routellm_causal_llm"

    def __init__(self, config: RouteLLMConfig, runtime: RouterRuntime, model: Any, tokenizer: Any, device: str,
                 system: str = SYSTEM_MESSAGE, classifier: str = CLASSIFIER_MESSAGE) -> None:
        super().__init__(config, runtime, model, tokenizer, device)
        self.system, self.classifier = system, classifier
        self.grade_ids = tokenizer.convert_tokens_to_ids(list(GRADE_TOKENS))

    @classmethod
    def load(cls, path: Path, runtime: RouterRuntime) -> RouteLLMCausalRouter:
        from routers.embeddings import resolve_device
        from routers.ml_imports import ML_IMPORT_LOCK

        with ML_IMPORT_LOCK:
            from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(runtime.device)
        tokenizer = AutoTokenizer.from_pretrained(str(path), truncation_side="left", padding_side="left")
        missing = [t for t in GRADE_TOKENS if t not in tokenizer.get_vocab()]
        if missing:  # RouteLLM adds them to the base's tokenizer at load time, after its vocabulary
            tokenizer.add_tokens(missing, special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = "auto" if device != "cpu" else None  # bf16 weights run slowly on most CPUs: float32 there
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=dtype)
        model = model.to(device).eval()
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise InvalidInput(f"{path / CONFIG_FILE}: the model has {model.get_input_embeddings().num_embeddings} "
                               f"token embeddings, fewer than its tokenizer with the grade tokens "
                               f"({len(tokenizer)}): not a RouteLLM causal router")
        system, classifier = (
            (path / name).read_text() if (path / name).is_file() else default
            for name, default in ((SYSTEM_FILE, SYSTEM_MESSAGE), (CLASSIFIER_FILE, CLASSIFIER_MESSAGE)))
        return cls(RouteLLMConfig(), runtime, model, tokenizer, device, system, classifier)

    def prompt_text(self, prompt: str) -> str:
        """The classifier's input, in the base's chat format (Llama 3's header tokens for the published one)."""
        messages = [{"role": "system", "content": self.system.strip()},
                    {"role": "user", "content": self.classifier.format(question=prompt).strip()}]
        if "<|start_header_id|>" in self.tokenizer.get_vocab():  # RouteLLM's Llama 3 format, without a trailing
            return "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                           for m in messages)  # assistant header: the grade follows the user's turn
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        texts = [self.prompt_text(p) for p in prompts]
        out = []
        for _, logits in self._batches(texts, progress):
            grades = logits[:, -1, self.grade_ids].softmax(-1)  # left padding: the last position is the next token
            out.append((1 - grades[:, self.config.score_threshold - 1:].sum(-1)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


FORMATS: dict[str, type[RouteLLMBertRouter] | type[RouteLLMCausalRouter]] = {
    "routellm_bert": RouteLLMBertRouter, "routellm_causal_llm": RouteLLMCausalRouter}
